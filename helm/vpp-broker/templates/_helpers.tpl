{{/*
Shared names, labels and derived settings for the vpp-broker chart.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "vpp-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>", or the release name alone when it already
contains the chart name. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "vpp-broker.fullname" -}}
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

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "vpp-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource, without a component. */}}
{{- define "vpp-broker.commonLabels" -}}
helm.sh/chart: {{ include "vpp-broker.chart" . }}
app.kubernetes.io/name: {{ include "vpp-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vpp-broker
{{- end }}

{{/* Labels of the service (API + workers) and the resources around it. */}}
{{- define "vpp-broker.labels" -}}
{{ include "vpp-broker.commonLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Selector labels of the service pods: stable for the life of a release (Deployment selectors are
immutable). The component keeps the migration Job's pod out of the Service, PDB and spread.
*/}}
{{- define "vpp-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vpp-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* ServiceAccount used by the service pods. */}}
{{- define "vpp-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vpp-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods read: secrets.existingSecret, else "<fullname>". */}}
{{- define "vpp-broker.secretName" -}}
{{- default (include "vpp-broker.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Container image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "vpp-broker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* VPP_PUBLIC_URL: config.publicUrl, else derived from the Ingress host. May be empty. */}}
{{- define "vpp-broker.publicUrl" -}}
{{- if .Values.config.publicUrl }}
{{- .Values.config.publicUrl | trimSuffix "/" }}
{{- else if and .Values.ingress.enabled .Values.ingress.host }}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host }}
{{- end }}
{{- end }}

{{/*
Environment shared by the service container and the migration Job: non-secret settings from
the ConfigMap, then the secret keys. JWT keys are optional (one of HS256 secret, PEM keys or
JWKS URL is needed); DATABASE_URL and VPP_TOKEN_KEYS are required.
*/}}
{{- define "vpp-broker.secretEnv" -}}
{{- $secret := include "vpp-broker.secretName" . -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.keys.databaseUrl }}
- name: VPP_TOKEN_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.keys.tokenKeys }}
- name: VPP_JWT_HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.keys.jwtHs256Secret }}
      optional: true
- name: VPP_JWT_PUBLIC_KEYS_PEM
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.keys.jwtPublicKeysPem }}
      optional: true
{{- end }}

{{/*
Checks that span several values (the schema covers single keys). Included by the Deployment so
a bad combination fails at render time with a clear message.
*/}}
{{- define "vpp-broker.validate" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- $needed := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.config.shutdownTimeoutSeconds) }}
{{- if le $grace $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + config.shutdownTimeoutSeconds (%d), or Kubernetes kills pods before in-flight requests drain" $grace $needed) }}
{{- end }}
{{- if and .Values.secrets.create .Values.secrets.existingSecret }}
{{- fail "secrets.create and secrets.existingSecret are mutually exclusive: either the chart creates the Secret (development) or you name yours" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) }}
{{- fail "ingress.host is required when ingress.enabled is true (Apple needs a public host name to deliver notifications)" }}
{{- end }}
{{- end }}
