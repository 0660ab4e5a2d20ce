{{/* Names and labels shared by every object of the chart. */}}

{{- define "starling.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; the headless Service adds "-headless" to it. */}}
{{- define "starling.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "starling.headless" -}}
{{- printf "%s-headless" (include "starling.fullname" .) -}}
{{- end -}}

{{/* The DNS domain of the pods' stable names: <pod>.<this>. */}}
{{- define "starling.domain" -}}
{{- printf "%s.%s.svc.%s" (include "starling.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* cluster_seeds: the stable names of the first cluster.seedCount pods. */}}
{{- define "starling.seeds" -}}
{{- $seeds := list -}}
{{- range $i := until (int .Values.cluster.seedCount) -}}
{{- $seeds = append $seeds (printf "%s-%d.%s" (include "starling.fullname" $) $i (include "starling.domain" $)) -}}
{{- end -}}
{{- join "," $seeds -}}
{{- end -}}

{{/* The Secret holding cluster_secret: the user's, or the one the chart makes. */}}
{{- define "starling.clusterSecret" -}}
{{- default (printf "%s-cluster" (include "starling.fullname" .)) .Values.cluster.secret.existingSecret -}}
{{- end -}}

{{- define "starling.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "starling.selectorLabels" -}}
app.kubernetes.io/name: {{ include "starling.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "starling.labels" -}}
helm.sh/chart: {{ include "starling.chart" . }}
{{ include "starling.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "starling.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "starling.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "starling.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The client listeners that are on, as a list of "name port" pairs. */}}
{{- define "starling.clientPorts" -}}
{{- $l := .Values.listeners -}}
- name: mqtt
  port: {{ $l.mqtt.port }}
{{- if $l.mqtts.enabled }}
- name: mqtts
  port: {{ $l.mqtts.port }}
{{- end }}
{{- if $l.ws.enabled }}
- name: ws
  port: {{ $l.ws.port }}
{{- end }}
{{- if $l.wss.enabled }}
- name: wss
  port: {{ $l.wss.port }}
{{- end }}
{{- end -}}

{{/* Refuse combinations that would give a pod that cannot start. */}}
{{- define "starling.validate" -}}
{{- $l := .Values.listeners -}}
{{- if and (or $l.mqtts.enabled $l.wss.enabled) (not .Values.tls.enabled) -}}
{{- fail "listeners.mqtts and listeners.wss need tls.enabled=true and tls.existingSecret" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- fail "tls.enabled=true needs tls.existingSecret: a kubernetes.io/tls Secret with tls.crt and tls.key" -}}
{{- end -}}
{{- if and .Values.tls.requireCertificate (not .Values.tls.caKey) -}}
{{- fail "tls.requireCertificate=true needs tls.caKey: the key of the CA certificate in tls.existingSecret" -}}
{{- end -}}
{{- if lt (int .Values.replicaCount) (int .Values.cluster.seedCount) -}}
{{- fail "replicaCount must be at least cluster.seedCount: the seeds are the first cluster.seedCount pods, and they form the cluster" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not (or $l.mqtts.enabled $l.wss.enabled)) -}}
{{- fail "tls.enabled=true but neither listeners.mqtts nor listeners.wss is enabled" -}}
{{- end -}}
{{- end -}}
