{{/* Labels on every object's metadata. part-of is what manifests/ sets (commonLabels). */}}
{{- define "certctl.labels" -}}
app.kubernetes.io/part-of: certctl
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The selector of one component's pods: "controller" or "dataplane". */}}
{{- define "certctl.selector" -}}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/name: certctl
app.kubernetes.io/part-of: certctl
{{- end -}}

{{- define "certctl.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The watched namespaces, refusing an empty list. */}}
{{- define "certctl.watchNamespaces" -}}
{{- if not .Values.watchNamespaces -}}
{{- fail "watchNamespaces must name at least one namespace" -}}
{{- end -}}
{{- toJson .Values.watchNamespaces -}}
{{- end -}}

{{/* Where the controller works: certctl's own namespace, then the watched ones. */}}
{{- define "certctl.controllerNamespaces" -}}
{{- $watched := include "certctl.watchNamespaces" . | fromJsonArray -}}
{{- toJson (prepend $watched .Values.namespace | uniq) -}}
{{- end -}}

{{- define "certctl.metrics" -}}
{{- if or .Values.metrics.enabled .Values.serviceMonitor.enabled }}true{{ end -}}
{{- end -}}
