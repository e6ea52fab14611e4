// A cert-manager controller for bench/b8_peer.py, built from the
// github.com/cert-manager/cert-manager module by scripts/testservers/build.sh.
//
// cert-manager's own main package lives in a module of its own
// (github.com/cert-manager/cert-manager/cmd/controller) that the Go module proxy
// does not serve, so this program wires the same controllers the same way
// (pkg/controller's ContextFactory, the constructors its packages register) with
// cert-manager's default settings, and takes as flags what a benchmark on loopback
// must change (where the API server and the DNS server are) and cert-manager's own
// client limits (--kube-api-qps, --kube-api-burst), its defaults unless given.
//
// The controllers run are cert-manager's default set for ACME issuance from
// annotated Ingresses: issuers, clusterissuers, ingress-shim, the Certificate
// controllers (trigger, key manager, request manager, issuing, readiness,
// revision manager), the CertificateRequest approver and ACME issuer, orders and
// challenges. Leader election is off (one replica).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/resource"

	_ "github.com/cert-manager/cert-manager/pkg/controller/acmechallenges"
	_ "github.com/cert-manager/cert-manager/pkg/controller/acmeorders"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificate-shim/ingresses"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/acme"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/acme"
)

// cert-manager's defaults (internal/apis/config/controller/v1alpha1/defaults.go).
const (
	defaultQPS              = 20
	defaultBurst            = 50
	defaultWorkers          = 5
	defaultMaxChallenges    = 60
	defaultDNS01CheckPeriod = 10 * time.Second
	defaultMinimumBackoff   = time.Hour
	defaultMaximumBackoff   = 32 * time.Hour
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	namespace := flag.String("cluster-resource-namespace", "kube-system",
		"namespace of the ClusterIssuers' Secrets")
	nameserver := flag.String("dns01-recursive-nameserver", "",
		"host:port asked for DNS-01 propagation checks, and only it")
	qps := flag.Float64("kube-api-qps", defaultQPS, "API requests a second")
	burst := flag.Int("kube-api-burst", defaultBurst, "API request burst")
	flag.Parse()

	logf.InitLogs()
	defer logf.FlushLogs()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")
	if err := run(ctx, *kubeconfig, *namespace, *nameserver, float32(*qps), *burst); err != nil {
		fmt.Fprintln(os.Stderr, "cert-manager:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, kubeconfig, namespace, nameserver string, qps float32,
	burst int) error {
	nameservers := []string{}
	if nameserver != "" {
		nameservers = []string{nameserver}
	}
	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   qps,
		KubernetesAPIBurst: burst,
		ACMEOptions: controller.ACMEOptions{
			HTTP01SolverResourceRequestCPU:    resource.MustParse("10m"),
			HTTP01SolverResourceRequestMemory: resource.MustParse("64Mi"),
			HTTP01SolverResourceLimitsCPU:     resource.MustParse("100m"),
			HTTP01SolverResourceLimitsMemory:  resource.MustParse("64Mi"),
			ACMEHTTP01SolverRunAsNonRoot:      true,
			DNS01Nameservers:                  nameservers,
			DNS01CheckRetryPeriod:             defaultDNS01CheckPeriod,
			// --dns01-recursive-nameservers-only: the zone's NS records name port 53.
			DNS01CheckAuthoritative: nameserver == "",
		},
		SchedulerOptions: controller.SchedulerOptions{MaxConcurrentChallenges: defaultMaxChallenges},
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace:        namespace,
			ClusterIssuerAmbientCredentials: true,
		},
		IngressShimOptions: controller.IngressShimOptions{
			DefaultIssuerKind:                 "Issuer",
			DefaultIssuerGroup:                "cert-manager.io",
			DefaultAutoCertificateAnnotations: []string{"kubernetes.io/tls-acme"},
		},
		CertificateOptions: controller.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: defaultMinimumBackoff,
			CertificateRequestMaximumBackoffDuration: defaultMaximumBackoff,
		},
	})
	if err != nil {
		return err
	}
	built, err := factory.Build()
	if err != nil {
		return err
	}
	group, ctx := errgroup.WithContext(ctx)
	names := make([]string, 0, len(controller.Known()))
	for name := range controller.Known() {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		running, err := controller.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
		group.Go(func() error { return running.Run(defaultWorkers, ctx) })
	}
	fmt.Fprintf(os.Stderr, "cert-manager: running %v\n", names)
	built.SharedInformerFactory.Start(ctx.Done())
	built.KubeSharedInformerFactory.Start(ctx.Done())
	built.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	return group.Wait()
}
