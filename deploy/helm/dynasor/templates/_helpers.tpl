{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "dynasor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name of every object; the release name alone when it already holds the chart's. */}}
{{- define "dynasor.fullname" -}}
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

{{- define "dynasor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dynasor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dynasor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dynasor.labels" -}}
helm.sh/chart: {{ include "dynasor.chart" . }}
{{ include "dynasor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dynasor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dynasor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The `dynasor` command inside the image. */}}
{{- define "dynasor.bin" -}}
{{- printf "%s/.venv/bin/dynasor" (trimSuffix "/" .Values.installDir) }}
{{- end }}

{{/* Drain grace in whole seconds; terminationGracePeriodSeconds adds the unload time to it. */}}
{{- define "dynasor.graceSeconds" -}}
{{- .Values.drain.graceSeconds | int }}
{{- end }}

{{- define "dynasor.terminationGracePeriodSeconds" -}}
{{- add (.Values.drain.graceSeconds | int) (.Values.drain.unloadSeconds | int) }}
{{- end }}

{{/* NAME/1/model.json text when NAME.modelJson is set (a map, or JSON text), else empty.
     Called with (list $ "policy") or (list $ "reward"). */}}
{{- define "dynasor.modelJson" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- with (index $root.Values $name).modelJson }}
{{- if kindIs "string" . }}
{{- $parsed := fromJson . }}
{{- if and (hasKey $parsed "Error") (eq (len $parsed) 1) }}
{{- fail (printf "%s.modelJson is not a JSON object: %s" $name (get $parsed "Error")) }}
{{- end }}
{{- $parsed | toPrettyJson }}
{{- else }}
{{- . | toPrettyJson }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether any model.json is replaced. */}}
{{- define "dynasor.anyModelJson" -}}
{{- if or .Values.policy.modelJson .Values.reward.modelJson }}true{{- end }}
{{- end }}
