{{/* Names and labels shared by every template. */}}

{{- define "adaudit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "adaudit.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "adaudit.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "adaudit.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", component in gateway|triton|triton-shadow */}}
{{- define "adaudit.componentName" -}}
{{- printf "%s-%s" (include "adaudit.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "adaudit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "adaudit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "adaudit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "adaudit.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "adaudit.componentLabels" -}}
{{ include "adaudit.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "adaudit.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Secret holding the database URL (and the API keys when given as a value). */}}
{{- define "adaudit.secretName" -}}
{{- printf "%s-secrets" (include "adaudit.fullname" .) -}}
{{- end -}}

{{/* "true" when the decision log is a SQLite URL given as a value (one file per pod), else empty. */}}
{{- define "adaudit.sqlite" -}}
{{- if and (not .Values.database.existingSecret) (hasPrefix "sqlite" .Values.database.url) -}}
true
{{- end -}}
{{- end -}}

{{/* Triton's host:port for the gateway: its HTTP or gRPC port, by triton.protocol. */}}
{{- define "adaudit.tritonUrl" -}}
{{- if .Values.triton.enabled -}}
{{- $port := ternary .Values.triton.ports.grpc .Values.triton.ports.http (eq .Values.triton.protocol "grpc") -}}
{{- printf "%s:%v" (include "adaudit.componentName" (dict "root" . "component" "triton")) $port -}}
{{- else -}}
{{- required "triton.externalUrl is required when triton.enabled is false (host:port of triton.protocol)" .Values.triton.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Models Triton loads: triton.models, or the gateway's primary, canary and active shadow models (the
shadow's only while it has no Triton of its own: adaudit.shadowTriton). */}}
{{- define "adaudit.tritonModels" -}}
{{- $settings := .Values.gateway.settings -}}
{{- $models := .Values.triton.models -}}
{{- if not $models -}}
{{- $models = list $settings.primary_model -}}
{{- if and $settings.canary_model (gt (float64 $settings.canary_fraction) 0.0) -}}
{{- $models = append $models $settings.canary_model -}}
{{- end -}}
{{- if and $settings.shadow_model (gt (float64 $settings.shadow_fraction) 0.0) (not (include "adaudit.shadowTriton" .)) -}}
{{- $models = append $models $settings.shadow_model -}}
{{- end -}}
{{- end -}}
{{- uniq $models | join "," -}}
{{- end -}}

{{/* "true" when the shadow model gets its own Triton (<fullname>-triton-shadow: Deployment and Service), else
empty: the chart runs Triton, shadowTriton.enabled, the shadow is on (shadow_model, shadow_fraction > 0) and
gateway.settings.shadow_triton_url does not name another one. */}}
{{- define "adaudit.shadowTriton" -}}
{{- $settings := .Values.gateway.settings -}}
{{- if and .Values.triton.enabled .Values.shadowTriton.enabled $settings.shadow_model (gt (float64 $settings.shadow_fraction) 0.0) (not $settings.shadow_triton_url) -}}
true
{{- end -}}
{{- end -}}

{{/* The shadow Triton's host:port for the gateway (ADAUDIT_SHADOW_TRITON_URL): its Service, the port of triton.protocol. */}}
{{- define "adaudit.shadowTritonUrl" -}}
{{- $port := ternary .Values.triton.ports.grpc .Values.triton.ports.http (eq .Values.triton.protocol "grpc") -}}
{{- printf "%s:%v" (include "adaudit.componentName" (dict "root" . "component" "triton-shadow")) $port -}}
{{- end -}}

{{/* Container security context (restricted Pod Security Standard). */}}
{{- define "adaudit.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .readOnlyRootFilesystem }}
runAsNonRoot: {{ .runAsNonRoot }}
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Checks the schema cannot express; each fails the install with one message naming the values. */}}
{{- define "adaudit.validate" -}}
{{- $repository := .Values.triton.modelRepository -}}
{{- if and .Values.triton.enabled (not (or $repository.url $repository.pvc.claimName)) -}}
{{- fail "triton.modelRepository: set pvc.claimName or url (s3://, gs://, as://)" -}}
{{- end -}}
{{- if and .Values.triton.enabled $repository.url $repository.pvc.claimName -}}
{{- fail "triton.modelRepository: set either pvc.claimName or url, not both (set pvc.claimName to \"\")" -}}
{{- end -}}
{{- $settings := .Values.gateway.settings -}}
{{- if and (gt (float64 $settings.canary_fraction) 0.0) (not $settings.canary_model) -}}
{{- fail "gateway.settings.canary_fraction > 0 needs gateway.settings.canary_model" -}}
{{- end -}}
{{- if and (gt (float64 $settings.shadow_fraction) 0.0) (not $settings.shadow_model) -}}
{{- fail "gateway.settings.shadow_fraction > 0 needs gateway.settings.shadow_model" -}}
{{- end -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) -}}
{{- fail "database: set url or existingSecret" -}}
{{- end -}}
{{- if include "adaudit.sqlite" . -}}
{{- $gateway := .Values.gateway -}}
{{- $value := ternary "gateway.autoscaling.maxReplicas" "gateway.replicas" $gateway.autoscaling.enabled -}}
{{- $most := ternary $gateway.autoscaling.maxReplicas $gateway.replicas $gateway.autoscaling.enabled -}}
{{- if gt (int $most) 1 -}}
{{- fail (printf "database.url is SQLite, one file per gateway pod, but %s allows %d gateway pods: decisions would be split across pods and lost with them. Use PostgreSQL (database.existingSecret, or a postgresql+psycopg:// database.url), or one pod (gateway.autoscaling.enabled: false, gateway.replicas: 1)" $value (int $most)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.apiKeys.enabled (not (or .Values.apiKeys.entries .Values.apiKeys.existingSecret)) -}}
{{- fail "apiKeys.enabled needs apiKeys.entries or apiKeys.existingSecret" -}}
{{- end -}}
{{- end -}}

{{/* A setting as an environment value: lists comma-separated, whole numbers without an exponent (YAML numbers arrive as float64). */}}
{{- define "adaudit.settingValue" -}}
{{- if kindIs "slice" . -}}
{{- join "," . -}}
{{- else if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}
