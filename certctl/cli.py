"""The `certctl` command."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import certctl
from certctl.api import conditions, kinds, nginx_annotations, parsing
from certctl.api.resources import ObjectKey
from certctl.controllers import order_budget
from certctl.dataplane import DEFAULT_MAX_CONNECTIONS, certstore
from certctl.runtime import on_demand
from certctl.solvers.dns01 import lookup
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.interface import Conflict, Store, StoreError
from certctl.store.local import SERVE_INFO, LocalStore

if TYPE_CHECKING:
    import kubernetes.client

# `certctl status KIND`: singular or plural, as kubectl takes them.
STATUS_KINDS = {
    name: info.kind
    for info in map(kinds.BY_KIND.__getitem__,
                    ("Certificate", "Order", "Challenge", "Issuer", "ClusterIssuer", "Ingress"))
    for name in (info.kind.lower(), info.plural)
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.func(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certctl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"certctl {certctl.version()}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="issue and serve certificates for the Ingresses in a folder of manifests")
    serve.add_argument("--manifests", type=Path, required=True,
                       help="folder (or file) of Kubernetes YAML: issuers, Ingresses, Services")
    serve.add_argument("--state-dir", type=Path, required=True,
                       help="where Secrets, Certificates, Orders and statuses are kept")
    _edge_arguments(serve, http_port=80, https_port=443, metrics_address="127.0.0.1",
                    shutdown_delay=0.0)
    serve.add_argument("--self-check-port", type=int, default=None,
                       help="port of HTTP-01 self-checks (default: --http-port)")
    # Shorter than the data plane's 20 s: `docker stop` sends SIGKILL 10 s after SIGTERM
    # by default, and serve, usually one host, has no replica to take over meanwhile.
    serve.add_argument("--drain-timeout", type=_seconds, default=8.0, metavar="DURATION",
                       help="after SIGTERM (and --shutdown-delay), stop accepting and let "
                       "in-flight requests and HTTP/2 streams finish for up to this long, "
                       "then cut what is left and exit (default: %(default)gs)")
    _issuing_arguments(serve)
    serve.add_argument("--no-watch", action="store_true",
                       help="read the manifests once instead of watching them")
    _on_demand_arguments(serve)
    serve.set_defaults(func=_serve)

    controller = commands.add_parser(
        "controller", help="run the Kubernetes controller (leader-elected)")
    _cluster_arguments(controller)
    controller.add_argument(
        "--namespace", "--watch-namespace", action="append", default=[],
        dest="watch_namespaces", metavar="NAMESPACE",
        help="watch and list only this namespace (repeatable; default: the whole cluster); "
             "include the --cluster-resource-namespace")
    controller.add_argument("--leader-election-namespace", default="certctl")
    controller.add_argument("--leader-election-name", default="certctl-controller",
                            help="name of the coordination.k8s.io Lease the replicas share")
    controller.add_argument("--no-leader-election", action="store_true",
                            help="reconcile without a Lease (only ever run one replica then)")
    controller.add_argument("--solver-service", default="certctl/certctl-dataplane",
                            metavar="NAMESPACE/NAME[:PORT]",
                            help="the data-plane Service solver Ingresses route HTTP-01 to")
    controller.add_argument("--ingress-class", default="certctl",
                            help="the Ingress class the data plane serves: an HTTP-01 solver "
                            "of this class needs no solver Ingress, the data plane answers "
                            "the token itself (default: certctl)")
    controller.add_argument("--self-check-port", type=int, default=80)
    controller.add_argument("--metrics-address", default="127.0.0.1", metavar="HOST[,HOST]",
                            help="host(s) of the admin address: /metrics, /healthz, /readyz "
                            "and the dashboard, without login (default: %(default)s; in a pod, "
                            "its own IP for the probes and Prometheus)")
    controller.add_argument("--metrics-port", type=int, default=9402,
                            help="port of the admin address, cert-manager's 9402 (0: off)")
    _issuing_arguments(controller)
    controller.set_defaults(func=_controller)

    dataplane = commands.add_parser(
        "dataplane", help="run the data plane for a cluster: serve Ingresses with TLS by SNI")
    _cluster_arguments(dataplane)
    dataplane.add_argument(
        "--namespace", "--watch-namespace", action="append", default=[],
        dest="watch_namespaces", metavar="NAMESPACE",
        help="serve the Ingresses, and read the Secrets, of this namespace only "
             "(repeatable; default: the whole cluster)")
    # The data plane's admin address stays on its listen address (all of them) by default:
    # kubelet's probes and Prometheus reach a pod on its own IP, which the manifests name.
    _edge_arguments(dataplane, http_port=8080, https_port=8443, metrics_address=None,
                    shutdown_delay=5.0)
    # 5 s of delay and 20 s of drain stay within kubelet's default 30 s
    # terminationGracePeriodSeconds (the manifests set it), so the process exits by itself.
    dataplane.add_argument("--drain-timeout", type=_seconds, default=20.0, metavar="DURATION",
                           help="after the --shutdown-delay, stop accepting and let in-flight "
                           "requests and HTTP/2 streams finish for up to this long (each "
                           "connection closed once idle), then cut what is left and exit "
                           "(default: %(default)gs)")
    dataplane.add_argument("--publish-service", default=None, metavar="NAMESPACE/NAME",
                           help="put the addresses of this Service (its load balancer's "
                           "status.loadBalancer.ingress and its externalIPs), followed as they "
                           "change, into served Ingresses' status.loadBalancer, as "
                           "ingress-nginx's flag of that name (--load-balancer-address, "
                           "when given too, wins)")
    dataplane.set_defaults(func=_dataplane)

    status = commands.add_parser(
        "status", help="show the status of certctl objects (of `serve` with --state-dir, "
        "else of the cluster in the kubeconfig)")
    status.add_argument("kind", choices=sorted(STATUS_KINDS))
    status.add_argument("name", nargs="?", help="omit to list every object of the kind")
    status.add_argument("-n", "--namespace", default="default")
    status.add_argument("-A", "--all-namespaces", action="store_true")
    status.add_argument("--state-dir", type=Path, default=None)
    status.add_argument("--manifests", type=Path, default=None,
                        help="the manifests `serve` reads (default: those the last `serve` "
                        "on this state dir read), to show user-defined objects too")
    _cluster_arguments(status)
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")
    status.set_defaults(func=_status)

    renew = commands.add_parser(
        "renew", help="issue a Certificate again now, like `cmctl renew` (in a cluster)")
    renew.add_argument("name")
    renew.add_argument("-n", "--namespace", default="default")
    _cluster_arguments(renew)
    renew.set_defaults(func=_renew)
    return parser


def _edge_arguments(parser: argparse.ArgumentParser, *, http_port: int, https_port: int,
                    metrics_address: str | None, shutdown_delay: float) -> None:
    """What the data plane listens on and serves (`serve`, `dataplane`)."""
    parser.add_argument("--listen-address", default="0.0.0.0",  # noqa: S104
                        help="address the data plane binds (default: all)")
    parser.add_argument("--http-port", type=int, default=http_port)
    parser.add_argument("--no-http", action="store_true",
                        help="no HTTP listener: certificates by TLS-ALPN-01 or DNS-01 only, "
                        "no HTTP-to-HTTPS redirects")
    parser.add_argument("--https-port", type=int, default=https_port)
    parser.add_argument("--ingress-class", default="certctl",
                        help="Ingress class served when no IngressClass objects exist")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve the admin address on this port: Prometheus /metrics, "
                        "/healthz, /readyz and the dashboard, without login (default: off)")
    parser.add_argument("--metrics-address", default=metrics_address, metavar="HOST[,HOST]",
                        help="host(s) of the admin address; never a public one, it has no "
                        f"login (default: {metrics_address or 'the --listen-address'})")
    parser.add_argument("--shutdown-delay", type=_seconds, default=shutdown_delay,
                        metavar="DURATION",
                        help="after SIGTERM, answer /readyz 503 and keep serving this long "
                        "before closing the listeners, while load balancers stop sending "
                        f"new connections here (default: {shutdown_delay:g}s)")
    parser.add_argument("--load-balancer-address", default=None, metavar="IP|HOSTNAME",
                        help="the address put into served Ingresses' status.loadBalancer "
                        "(default: leave their status alone)")
    parser.add_argument("--tls-context-cache", type=_positive_int,
                        default=certstore.DEFAULT_CONTEXT_CACHE_SIZE, metavar="N",
                        help="keep the N most recently served certificates decoded for OpenSSL "
                        "(about 8 KiB each; a name whose certificate was dropped costs about "
                        "0.5 ms of CPU on its next handshake; default: %(default)s)")
    parser.add_argument("--max-connections", type=_positive_int,
                        default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help="client connections the data plane holds at once; beyond it "
                        "HTTPS clients wait in the listen backlog and HTTP ones are closed "
                        "(default: %(default)s)")
    parser.add_argument(nginx_annotations.OPT_OUT_FLAG, dest="allow_unenforced_access",
                        action="store_true",
                        help="serve Ingresses whose access-restricting annotations (auth-*, "
                        "*-source-range, limit-*, snippets) certctl does not enforce, without "
                        "those restrictions (default: answer 503 for them)")


def _issuing_arguments(parser: argparse.ArgumentParser) -> None:
    """How the reconcilers issue (`serve`, `controller`)."""
    parser.add_argument("--cluster-resource-namespace", default="certctl",
                        help="namespace of ClusterIssuer Secrets (ACME account keys, CA "
                        "key pairs, kept certificate copies)")
    parser.add_argument("--self-check-address", default=None,
                        help="connect HTTP-01 and TLS-ALPN-01 self-checks here instead of "
                        "resolving each name "
                        "(like curl --resolve); default: DNS")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--acme-process", action=argparse.BooleanOptionalAction, default=True,
                        help="make ACME requests from a helper process, so that issuing many "
                        "certificates at once uses a second core (default: on)")
    parser.add_argument("--backoff-base", type=_seconds, default=3600.0,
                        help="seconds before retrying a failed issuance; doubles per failure, "
                        "capped at 32 h (default 3600, as cert-manager)")
    parser.add_argument("--order-budget", type=_order_budget, default="5/168h",
                        metavar="N/DURATION|off",
                        help="refuse more than N ACME orders for one exact set of names per CA "
                        "within DURATION (default 5/168h, Let's Encrypt's duplicate-"
                        "certificate limit); off for a private CA without limits")
    _dns01_arguments(parser)


def _order_budget(text: str) -> order_budget.Budget | None:
    if text == "off":
        return None
    count, _, window = text.partition("/")
    try:
        budget = order_budget.Budget(orders=int(count),
                                     window=parsing.parse_duration(window or "168h"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected N/DURATION or off: {err}") from err
    if budget.orders < 1:
        raise argparse.ArgumentTypeError("N must be at least 1 (or say off)")
    return budget


def _dns01_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dns01-recursive-nameservers", default="",
                        metavar="HOST[:PORT],...",
                        help="where DNS-01 zone, CNAME and NS lookups go "
                        "(default: /etc/resolv.conf)")
    parser.add_argument("--dns01-recursive-nameservers-only", action="store_true",
                        help="self-check DNS-01 records against those nameservers instead of "
                        "the zone's authoritative ones")
    parser.add_argument("--dns01-propagation-timeout", type=_seconds, default=300.0,
                        help="how long to wait for a TXT record to be served (default 5m)")
    parser.add_argument("--dns01-webhook-url", default=None,
                        help="base URL serving webhook solvers' /apis/<group>/v1alpha1/<name>")


def _dns01_options(args: argparse.Namespace) -> dns01_solver.Options | None:
    """The DNS-01 settings from the command line, or None after printing what is wrong."""
    nameservers = []
    for text in filter(None, (part.strip() for part in
                              args.dns01_recursive_nameservers.split(","))):
        try:
            nameservers.append(lookup.parse_nameserver(text))
        except ValueError as err:
            print(f"certctl: --dns01-recursive-nameservers {text}: {err}", file=sys.stderr)
            return None
    if args.dns01_recursive_nameservers_only and not nameservers:
        print("certctl: --dns01-recursive-nameservers-only needs "
              "--dns01-recursive-nameservers", file=sys.stderr)
        return None
    return dns01_solver.Options(
        recursive_nameservers=tuple(nameservers),
        recursive_nameservers_only=args.dns01_recursive_nameservers_only,
        propagation_timeout=datetime.timedelta(seconds=args.dns01_propagation_timeout),
        api_endpoints={"webhook": args.dns01_webhook_url} if args.dns01_webhook_url else {},
    )


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="default: in-cluster service account, else $KUBECONFIG or "
                        "~/.kube/config")
    parser.add_argument("--context", default=None, help="kubeconfig context")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        return float(parsing.parse_duration(text).total_seconds())
    except ValueError:
        return float(text)


def _on_demand_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "on-demand TLS", "obtain a certificate during the first handshake for a name no "
        "certificate covers (needs --on-demand-tls-ask or --on-demand-tls-allow)")
    group.add_argument("--on-demand-tls-issuer", metavar="KIND/NAME", default=None,
                       help="turn it on, issuing from ClusterIssuer/NAME or Issuer/NAME")
    group.add_argument("--on-demand-tls-ask", metavar="URL", default=None,
                       help="a name is permitted when GET URL?domain=NAME answers 2xx")
    group.add_argument("--on-demand-tls-allow", metavar="PATTERN", action="append",
                       default=[], help="a name matching it is permitted ('*' is one whole "
                       "label, e.g. '*.example.com'); repeatable")
    group.add_argument("--on-demand-tls-wait", type=_seconds, default=10.0,
                       help="how long a first handshake waits for its certificate before it "
                       "gets the default one (default: 10s)")
    group.add_argument("--on-demand-tls-rate", type=_positive_int, default=10,
                       help="new on-demand certificates per minute, all names together "
                       "(default: 10)")
    group.add_argument("--on-demand-tls-namespace", default="certctl",
                       help="namespace of the on-demand Certificates and of an Issuer "
                       "(default: certctl)")


def _on_demand_policy(args: argparse.Namespace) -> on_demand.Policy | None:
    """The on-demand TLS policy the flags ask for, None when off; ValueError naming the flag
    when they cannot be used."""
    if args.on_demand_tls_issuer is None:
        if args.on_demand_tls_ask is not None or args.on_demand_tls_allow:
            raise ValueError("--on-demand-tls-ask and --on-demand-tls-allow need "
                             "--on-demand-tls-issuer")
        return None
    kind, name = on_demand.parse_issuer(args.on_demand_tls_issuer)
    return on_demand.Policy(
        issuer_kind=kind, issuer_name=name, namespace=args.on_demand_tls_namespace,
        ask_url=args.on_demand_tls_ask, allow=tuple(args.on_demand_tls_allow),
        wait=args.on_demand_tls_wait, names_per_minute=args.on_demand_tls_rate)


def _serve(args: argparse.Namespace) -> int:
    from certctl.runtime import standalone

    if not args.manifests.exists():
        print(f"certctl: --manifests {args.manifests}: no such file or folder", file=sys.stderr)
        return 2
    dns01 = _dns01_options(args)
    if dns01 is None:
        return 2
    try:
        on_demand_tls = _on_demand_policy(args)
    except ValueError as err:
        print(f"certctl: {err}", file=sys.stderr)
        return 2
    options = standalone.ServeOptions(
        manifests=args.manifests,
        state_dir=args.state_dir,
        listen_address=args.listen_address,
        http_port=None if args.no_http else args.http_port,
        https_port=args.https_port,
        self_check_address=args.self_check_address,
        self_check_port=args.self_check_port,
        cluster_resource_namespace=args.cluster_resource_namespace,
        ingress_class=args.ingress_class,
        workers=args.workers,
        acme_process=args.acme_process,
        backoff_base=datetime.timedelta(seconds=args.backoff_base),
        watch_manifests=not args.no_watch,
        dns01=dns01,
        order_budget=args.order_budget,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        shutdown_delay=args.shutdown_delay,
        drain_timeout=args.drain_timeout,
        load_balancer_address=args.load_balancer_address,
        tls_context_cache=args.tls_context_cache,
        max_connections=args.max_connections,
        enforce_access_annotations=not args.allow_unenforced_access,
        on_demand_tls=on_demand_tls,
    )
    try:
        standalone.run(options)
    except standalone.StartupError as err:
        print(f"certctl: {err}", file=sys.stderr)
        return 1
    return 0


def _kube_configuration(args: argparse.Namespace) -> kubernetes.client.Configuration | None:
    """The cluster connection, or None after printing why there is none."""
    import kubernetes.config  # only cluster commands pay for importing the client

    from certctl.store import kube

    try:
        return kube.load_configuration(kubeconfig=args.kubeconfig, context=args.context)
    except (kubernetes.config.ConfigException, OSError) as err:
        where = f"--kubeconfig {args.kubeconfig}" if args.kubeconfig else "kubeconfig"
        print(f"certctl: {where}: {err}", file=sys.stderr)
        return None


def _controller(args: argparse.Namespace) -> int:
    from certctl.runtime import leader, operator
    from certctl.solvers import http01_ingress

    configuration = _kube_configuration(args)
    dns01 = _dns01_options(args)
    if configuration is None or dns01 is None:
        return 2
    service, _, port = args.solver_service.partition(":")
    namespace, _, name = service.partition("/")
    if not namespace or not name or (port and not port.isdigit()):
        print(f"certctl: --solver-service {args.solver_service}: expected NAMESPACE/NAME[:PORT]",
              file=sys.stderr)
        return 2
    if args.watch_namespaces and args.cluster_resource_namespace not in args.watch_namespaces:
        print(f"certctl: --namespace: add --namespace {args.cluster_resource_namespace}, the "
              "--cluster-resource-namespace (ClusterIssuers keep their Secrets there)",
              file=sys.stderr)
        return 2
    options = operator.ControllerOptions(
        configuration=configuration,
        namespaces=tuple(args.watch_namespaces),
        cluster_resource_namespace=args.cluster_resource_namespace,
        leader_election=not args.no_leader_election,
        election=leader.ElectionSettings(namespace=args.leader_election_namespace,
                                         name=args.leader_election_name,
                                         identity=operator.default_identity()),
        data_plane=http01_ingress.DataPlaneService(namespace=namespace, name=name,
                                                   port=int(port or 80),
                                                   ingress_class=args.ingress_class),
        self_check_address=args.self_check_address,
        self_check_port=args.self_check_port,
        workers=args.workers,
        acme_process=args.acme_process,
        backoff_base=datetime.timedelta(seconds=args.backoff_base),
        metrics_address=(args.metrics_address, args.metrics_port) if args.metrics_port else None,
        dns01=dns01,
        order_budget=args.order_budget,
    )
    try:
        operator.run_controller(options)
    except operator.StartupError as err:
        print(f"certctl: {err}", file=sys.stderr)
        return 1
    return 0


def _dataplane(args: argparse.Namespace) -> int:
    from certctl.runtime import dataplane_feed, operator, published_service

    publish_service = None
    if args.publish_service is not None:
        try:
            publish_service = published_service.parse_reference(args.publish_service)
        except ValueError as err:
            print(f"certctl: {err}", file=sys.stderr)
            return 2
        if args.load_balancer_address is not None:
            # The fixed address wins, as ingress-nginx's --publish-status-address does, so
            # that the chart's extraArgs can override the --publish-service it passes.
            publish_service = None
    configuration = _kube_configuration(args)
    if configuration is None:
        return 2

    try:
        operator.run_dataplane(operator.DataPlaneOptions(
            configuration=configuration,
            namespaces=tuple(args.watch_namespaces),
            listening=dataplane_feed.Listening(
                address=args.listen_address,
                http_port=None if args.no_http else args.http_port,
                https_port=args.https_port, ingress_class=args.ingress_class,
                metrics_port=args.metrics_port or None,
                metrics_address=args.metrics_address,
                load_balancer_address=args.load_balancer_address,
                tls_context_cache=args.tls_context_cache,
                max_connections=args.max_connections,
                enforce_access_annotations=not args.allow_unenforced_access,
                drain_timeout=args.drain_timeout),
            shutdown_delay=args.shutdown_delay,
            publish_service=publish_service,
        ))
    except operator.StartupError as err:
        print(f"certctl: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"certctl: cannot listen on {args.listen_address} ports {args.http_port}/"
              f"{args.https_port}{f'/{args.metrics_port}' if args.metrics_port else ''}: "
              f"{err.strerror or err}", file=sys.stderr)
        return 1
    return 0


def _status_store(args: argparse.Namespace) -> tuple[Store, str] | None:
    """The store `status` reads: serve's state dir when given, else the cluster."""
    if args.state_dir is None:
        from certctl.store import kube

        configuration = _kube_configuration(args)
        if configuration is None:
            return None
        return kube.KubeStore(configuration=configuration), configuration.host
    if not args.state_dir.is_dir():
        print(f"certctl: --state-dir {args.state_dir}: no such folder", file=sys.stderr)
        return None
    manifests = args.manifests or _served_manifests(args.state_dir)
    store = LocalStore(manifests_dir=manifests, state_dir=args.state_dir)
    if manifests is not None:
        store.reload_manifests()
    return store, str(args.state_dir)


def _renew(args: argparse.Namespace) -> int:
    from certctl.api.status import CertificateStatus
    from certctl.controllers import policies
    from certctl.store import kube

    configuration = _kube_configuration(args)
    if configuration is None:
        return 2
    store = kube.KubeStore(configuration=configuration)
    key = ObjectKey(kind="Certificate", namespace=args.namespace, name=args.name)
    try:
        for _attempt in range(5):  # a conflict means the controller wrote first: re-read
            obj = store.get(kind="Certificate", namespace=args.namespace, name=args.name)
            if obj is None:
                print(f"certctl: {key} not found in {configuration.host}", file=sys.stderr)
                return 1
            status = CertificateStatus.from_object(obj)
            status.set_condition(
                type="Issuing", status="True", reason=policies.MANUALLY_TRIGGERED,
                message="Certificate re-issuance manually triggered",
                now=datetime.datetime.now(datetime.UTC),
                observed_generation=obj["metadata"].get("generation", 0))
            obj["status"] = status.to_dict()
            try:
                store.replace_status(obj=obj)
            except Conflict:
                continue
            print(f"Manually triggered issuance of {key}")
            return 0
    except StoreError as err:
        print(f"certctl: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"certctl: {key} kept changing; try again", file=sys.stderr)
    return 1


def _status(args: argparse.Namespace) -> int:
    found_store = _status_store(args)
    if found_store is None:
        return 2
    store, where = found_store
    try:
        return _show_status(args, store=store, where=where)
    except StoreError as err:
        print(f"certctl: {err}", file=sys.stderr)
        return 1


def _show_status(args: argparse.Namespace, *, store: Store, where: str) -> int:
    kind = STATUS_KINDS[args.kind]
    namespace = None if args.all_namespaces or kind == "ClusterIssuer" else args.namespace
    if args.name:
        obj = store.get(kind=kind, namespace=namespace, name=args.name)
        if obj is None:
            key = ObjectKey(kind=kind, namespace=namespace, name=args.name)
            print(f"certctl: {key} not found in {where}", file=sys.stderr)
            return 1
        found = [obj]
    else:
        found = store.list(kind=kind, namespace=namespace)
    if kind == "Ingress":
        found = [_with_annotation_conditions(obj) for obj in found]
    if args.output == "json":
        shown: Any = [_public(obj) for obj in found]
        print(json.dumps(shown[0] if args.name else shown, indent=2, sort_keys=True))
        return 0
    for obj in found:
        print(_describe(obj))
    return 0


def _with_annotation_conditions(ingress: dict[str, Any]) -> dict[str, Any]:
    """An Ingress with the conditions certctl's review of its annotations gives it."""
    annotations = (ingress.get("metadata") or {}).get("annotations") or {}
    review = nginx_annotations.review({k: str(v) for k, v in annotations.items()})
    status = dict(ingress.get("status") or {}, conditions=review.conditions())
    return dict(ingress, status=status)


def _served_manifests(state_dir: Path) -> Path | None:
    """The manifests `certctl serve` last read into this state dir, if still there."""
    try:
        recorded = json.loads((state_dir / SERVE_INFO).read_text())["manifests"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = Path(recorded)
    return path if path.exists() else None


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """What `status` shows: never Secret data, never CSR or key material."""
    return {
        "kind": obj.get("kind"),
        "metadata": {k: v for k, v in obj.get("metadata", {}).items()
                     if k in ("name", "namespace", "creationTimestamp", "generation")},
        "spec": {k: v for k, v in (obj.get("spec") or {}).items() if k not in ("request", "key")},
        "status": {k: v for k, v in (obj.get("status") or {}).items() if k != "certificate"},
    }


def _describe(obj: dict[str, Any]) -> str:
    metadata = obj["metadata"]
    name = f"{metadata.get('namespace')}/{metadata['name']}" if metadata.get("namespace") \
        else metadata["name"]
    status = obj.get("status") or {}
    lines = [f"{obj['kind']} {name}"]
    for condition in status.get("conditions") or []:
        lines.append(f"  {condition['type']}: {condition['status']} ({condition.get('reason')})"
                     f" {condition.get('message', '')}")
    for field in ("state", "reason", "notBefore", "notAfter", "renewalTime", "revision",
                  "failedIssuanceAttempts", "lastFailureTime", "retryAfter", "url"):
        if field in status and not (field == "reason" and "conditions" in status):
            lines.append(f"  {field}: {status[field]}")
    if obj["kind"] == "Certificate":
        ready = conditions.is_true(status.get("conditions") or [], "Ready")
        lines.insert(1, f"  secretName: {(obj.get('spec') or {}).get('secretName')}"
                     f"  ready: {'yes' if ready else 'no'}")
    return "\n".join(lines)
