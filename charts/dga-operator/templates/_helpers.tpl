{{/* Chart name, overridable. */}}
{{- define "dga-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless already contained. */}}
{{- define "dga-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dga-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dga-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dga-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dga-operator.labels" -}}
helm.sh/chart: {{ include "dga-operator.chart" . }}
{{ include "dga-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: dga-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dga-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dga-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dga-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "dga-operator.leaseName" -}}
{{- default (include "dga-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Refuses value combinations that cannot work; included by the Deployment. */}}
{{- define "dga-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: two operators without a leader would fight over the same DgaModels" }}
{{- end }}
{{- if and .Values.bundles.existingClaim .Values.bundles.configMap }}
{{- fail "set at most one of bundles.existingClaim and bundles.configMap" }}
{{- end }}
{{- end }}
