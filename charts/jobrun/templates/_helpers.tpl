{{/* The chart's name, overridable. */}}
{{- define "jobrun.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: the release name, with the chart's name
appended unless the release name already contains it. Object names add a
suffix (-manager, -api, ...), so it is kept to 40 characters.
*/}}
{{- define "jobrun.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "jobrun.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "jobrun.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the release's pods (plus app.kubernetes.io/component). */}}
{{- define "jobrun.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobrun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image of the manager and the REST API. */}}
{{- define "jobrun.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The manager's service account (generated from config/rbac). */}}
{{- define "jobrun.managerServiceAccount" -}}
{{ include "jobrun.fullname" . }}-manager
{{- end }}

{{/*
Settings that cannot be expressed in values.schema.json: fail with a message
that says which value to set.
*/}}
{{- define "jobrun.validate" -}}
{{- if .Values.api.enabled }}
{{- if and (not .Values.auth.jwt.existingSecret) (not .Values.auth.jwt.jwksURL) }}
{{- fail "api.enabled is true but the REST API has no way to check JWTs: set auth.jwt.existingSecret (a Secret holding an HS256 secret of at least 32 bytes) or auth.jwt.jwksURL" }}
{{- end }}
{{- if and .Values.auth.jwt.jwksURL (or (not .Values.auth.jwt.issuer) (not .Values.auth.jwt.audience)) }}
{{- fail "auth.jwt.jwksURL needs auth.jwt.issuer and auth.jwt.audience: the identity provider signs tokens for other applications too" }}
{{- end }}
{{- if and .Values.auth.jwt.existingSecret .Values.auth.jwt.jwksURL }}
{{- fail "set only one of auth.jwt.existingSecret (HS256) and auth.jwt.jwksURL (RS256/ES256)" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.api.mode "standalone") (not .Values.api.enabled) }}
{{- fail "api.mode is standalone but api.enabled is false" }}
{{- end }}
{{- if and .Values.smtp.passwordSecret.name (not .Values.smtp.username) }}
{{- fail "smtp.passwordSecret is set but smtp.username is empty: the password is only used with a user name" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- if and .Values.archive.enabled (not .Values.archive.existingSecret) }}
{{- fail "archive.enabled is true but archive.existingSecret is empty: name the Secret that holds the archive's PostgreSQL DSN (key archive.secretKey, default dsn; a CloudNativePG cluster's <cluster>-app Secret with archive.secretKey: uri)" }}
{{- end }}
{{- end }}

{{/*
The run archive's settings, in the manager and the standalone REST API alike
(included only with archive.enabled): the DSN from the Secret (never in args
or values), the durations as flags.
*/}}
{{- define "jobrun.archiveArgs" -}}
- --archive-live-ttl={{ .Values.archive.liveTTL }}
- --archive-retention={{ .Values.archive.retention }}
{{- end }}

{{- define "jobrun.archiveEnv" -}}
env:
  - name: JOBRUN_ARCHIVE_DSN
    valueFrom:
      secretKeyRef:
        name: {{ .Values.archive.existingSecret }}
        key: {{ .Values.archive.secretKey }}
{{- end }}

{{/*
The pod spec parts that the manager and the standalone REST API share:
security, volumes for secrets, scheduling.
*/}}
{{- define "jobrun.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "jobrun.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Flags and mounts of the REST API, in the manager or on its own; included only where the API is served. */}}
{{- define "jobrun.apiArgs" -}}
- --api-bind-address=:{{ .Values.api.port }}
- --namespace={{ .Release.Namespace }}
{{- if .Values.auth.jwt.jwksURL }}
- --jwks-url={{ .Values.auth.jwt.jwksURL }}
{{- else }}
- --jwt-secret-file=/etc/jobrun/jwt/{{ .Values.auth.jwt.secretKey }}
{{- end }}
{{- with .Values.auth.jwt.issuer }}
- {{ printf "--jwt-issuer=%s" . | quote }}
{{- end }}
{{- with .Values.auth.jwt.audience }}
- {{ printf "--jwt-audience=%s" . | quote }}
{{- end }}
- --jwt-max-token-lifetime={{ .Values.auth.jwt.maxTokenLifetime }}
{{- if .Values.auth.sessionKey.existingSecret }}
- --stream-ticket-key-file=/etc/jobrun/session-key/{{ .Values.auth.sessionKey.secretKey }}
{{- end }}
{{- with .Values.api.cors.allowedOrigins }}
- --api-cors-allowed-origins={{ join "," . }}
{{- end }}
{{- end }}

{{- define "jobrun.apiVolumeMounts" -}}
{{- if .Values.auth.jwt.existingSecret }}
- name: jwt
  mountPath: /etc/jobrun/jwt
  readOnly: true
{{- end }}
{{- if .Values.auth.sessionKey.existingSecret }}
- name: session-key
  mountPath: /etc/jobrun/session-key
  readOnly: true
{{- end }}
{{- end }}

{{- define "jobrun.apiVolumes" -}}
{{- if .Values.auth.jwt.existingSecret }}
- name: jwt
  secret:
    secretName: {{ .Values.auth.jwt.existingSecret }}
    items:
      - key: {{ .Values.auth.jwt.secretKey }}
        path: {{ .Values.auth.jwt.secretKey }}
{{- end }}
{{- if .Values.auth.sessionKey.existingSecret }}
- name: session-key
  secret:
    secretName: {{ .Values.auth.sessionKey.existingSecret }}
    items:
      - key: {{ .Values.auth.sessionKey.secretKey }}
        path: {{ .Values.auth.sessionKey.secretKey }}
{{- end }}
{{- end }}

{{- define "jobrun.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Annotations of the uninstall hook's objects (templates/uninstall.yaml), with
the hook weight given: its RBAC first, then the Job. They go when the hook
succeeded, and before a new one is made.
*/}}
{{- define "jobrun.uninstallHook" -}}
helm.sh/hook: post-delete
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end }}

{{/* The ClusterQueues of the teams' and the system's runs (kueue.*). */}}
{{- define "jobrun.kueueTeams" -}}
{{- .Values.kueue.teams.clusterQueue | default (printf "%s-teams" (include "jobrun.fullname" .)) -}}
{{- end }}
{{- define "jobrun.kueueSystem" -}}
{{- .Values.kueue.system.clusterQueue | default (printf "%s-system" (include "jobrun.fullname" .)) -}}
{{- end }}
