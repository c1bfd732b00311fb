{{/*
The sandbox pod. Three containers, in this order:
  lanyard-init  (transparent mode) installs the redirection rules: uid 0 with NET_ADMIN only.
  lanyard       native sidecar (restartPolicy: Always): its startup probe gates the agent.
  the agent     from values: no capabilities, never Lanyard's uid, no Workload API.
*/}}
{{- define "lanyard.podSpec" -}}
{{- $v := .Values -}}
{{- $configPath := printf "%s/lanyard.yaml" (include "lanyard.configDir" .) -}}
{{- $caDir := printf "%s/ca" (include "lanyard.shareDir" .) -}}
automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
serviceAccountName: {{ include "lanyard.serviceAccountName" . }}
# One process namespace per container: the agent cannot see or signal Lanyard.
shareProcessNamespace: false
# Service links put every service's address in the agent's environment; nothing here needs them.
enableServiceLinks: false
{{- if eq $v.workload.kind "Deployment" }}
restartPolicy: Always
{{- else }}
restartPolicy: {{ $v.workload.restartPolicy }}
{{- end }}
{{- with $v.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  seccompProfile:
    type: RuntimeDefault
initContainers:
  {{- if eq $v.mode "transparent" }}
  - name: lanyard-init
    image: {{ include "lanyard.image" . }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    args:
      - init
      - --backend={{ $v.init.backend }}
      - --proxy-uid={{ int $v.lanyard.uid }}
      - --agent-uid={{ int $v.agent.uid }}
      - --port={{ int $v.lanyard.transparentPort }}
      - --admin-port={{ int $v.lanyard.adminPort }}
      {{- if not $v.init.ipv6 }}
      - --no-ipv6
      {{- end }}
      {{- range $v.init.excludeCidrs }}
      - --exclude-cidr={{ . }}
      {{- end }}
      {{- range $v.init.excludePorts }}
      - --exclude-port={{ int . }}
      {{- end }}
      {{- range $v.init.dns }}
      - --dns={{ . }}
      {{- end }}
    securityContext:
      runAsUser: 0
      runAsGroup: 0
      runAsNonRoot: false
      privileged: false
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop: [ALL]
        add: [NET_ADMIN]
    resources:
      {{- toYaml $v.init.resources | nindent 6 }}
  {{- end }}
  - name: lanyard
    image: {{ include "lanyard.image" . }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    # A native sidecar: started before the agent, kept running beside it,
    # stopped after it.
    restartPolicy: Always
    args: [--log-format, {{ $v.lanyard.logFormat }}, proxy, --config, {{ $configPath }}]
    env:
      - name: LANYARD_LOG
        value: {{ $v.lanyard.logLevel | quote }}
    ports:
      - name: admin
        containerPort: {{ int $v.lanyard.adminPort }}
        protocol: TCP
    startupProbe:
      exec:
        command: [/usr/local/bin/lanyard, probe, --config, {{ $configPath }}]
      periodSeconds: {{ int $v.lanyard.startupProbe.periodSeconds }}
      failureThreshold: {{ int $v.lanyard.startupProbe.failureThreshold }}
      timeoutSeconds: 3
    livenessProbe:
      httpGet:
        path: /healthz
        port: admin
      periodSeconds: {{ int $v.lanyard.livenessProbe.periodSeconds }}
      failureThreshold: {{ int $v.lanyard.livenessProbe.failureThreshold }}
      timeoutSeconds: 3
    readinessProbe:
      httpGet:
        path: /readyz
        port: admin
      periodSeconds: {{ int $v.lanyard.readinessProbe.periodSeconds }}
      failureThreshold: {{ int $v.lanyard.readinessProbe.failureThreshold }}
      timeoutSeconds: 3
    securityContext:
      runAsUser: {{ int $v.lanyard.uid }}
      runAsGroup: {{ int $v.lanyard.gid }}
      runAsNonRoot: true
      privileged: false
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop: [ALL]
    resources:
      {{- toYaml $v.lanyard.resources | nindent 6 }}
    volumeMounts:
      - name: lanyard-config
        mountPath: {{ include "lanyard.configDir" . }}
        readOnly: true
      - name: lanyard-share
        mountPath: {{ include "lanyard.shareDir" . }}
      {{- if $v.ca.existingSecret }}
      - name: lanyard-ca-key
        mountPath: {{ include "lanyard.caKeyDir" . }}
        readOnly: true
      {{- else }}
      - name: lanyard-state
        mountPath: {{ include "lanyard.stateDir" . }}
      {{- end }}
      - name: spiffe-workload-api
        mountPath: {{ include "lanyard.socketDir" . }}
        readOnly: true
      {{- if $v.lanyard.adminTokenSecret }}
      - name: lanyard-admin-token
        mountPath: {{ include "lanyard.adminTokenDir" . }}
        readOnly: true
      {{- end }}
      {{- if or $v.upstreamCa.configMap $v.upstreamCa.secret }}
      - name: lanyard-upstream-ca
        mountPath: {{ include "lanyard.upstreamCaDir" . }}
        readOnly: true
      {{- end }}
      {{- if $v.policyOverlay.configMap }}
      - name: lanyard-policy-overlay
        mountPath: {{ include "lanyard.policyOverlayDir" . }}
        readOnly: true
      {{- end }}
containers:
  - name: {{ $v.agent.name }}
    image: {{ $v.agent.image }}
    imagePullPolicy: {{ $v.agent.imagePullPolicy }}
    {{- with $v.agent.command }}
    command:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.agent.args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.agent.workingDir }}
    workingDir: {{ . }}
    {{- end }}
    env:
      # Trust the sandbox CA: the combined bundle for clients that replace
      # their roots, the CA alone for those that add to them.
      {{- range list "SSL_CERT_FILE" "REQUESTS_CA_BUNDLE" "CURL_CA_BUNDLE" "GIT_SSL_CAINFO" "AWS_CA_BUNDLE" "PIP_CERT" "DENO_CERT" }}
      - name: {{ . }}
        value: {{ printf "%s/bundle.pem" $caDir }}
      {{- end }}
      - name: NODE_EXTRA_CA_CERTS
        value: {{ printf "%s/ca.pem" $caDir }}
      # wget reads its CA from a wgetrc; Java from a PKCS#12 truststore
      # (and, in explicit mode, its proxy from system properties).
      - name: WGETRC
        value: {{ printf "%s/wgetrc" $caDir }}
      - name: JAVA_TOOL_OPTIONS
        value: {{ printf "-Djavax.net.ssl.trustStore=%s/truststore.p12 -Djavax.net.ssl.trustStoreType=PKCS12" $caDir }}{{ if eq $v.mode "explicit" }}{{ printf " -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=%d -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=%d -Dhttp.nonProxyHosts=localhost|127.0.0.1|[::1]" (int $v.lanyard.explicitPort) (int $v.lanyard.explicitPort) }}{{ end }}
      {{- if eq $v.mode "explicit" }}
      {{- $proxy := printf "http://127.0.0.1:%d" (int $v.lanyard.explicitPort) }}
      {{- range list "HTTP_PROXY" "HTTPS_PROXY" "ALL_PROXY" "http_proxy" "https_proxy" "all_proxy" }}
      - name: {{ . }}
        value: {{ $proxy }}
      {{- end }}
      {{- range list "NO_PROXY" "no_proxy" }}
      - name: {{ . }}
        value: localhost,127.0.0.1,::1
      {{- end }}
      {{- end }}
      {{- with $v.agent.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $v.agent.ports }}
    ports:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      runAsUser: {{ int $v.agent.uid }}
      runAsGroup: {{ int $v.agent.gid }}
      runAsNonRoot: true
      privileged: false
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: {{ $v.agent.readOnlyRootFilesystem }}
      capabilities:
        drop: [ALL]
    {{- with $v.agent.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: lanyard-share
        mountPath: {{ include "lanyard.shareDir" . }}
        readOnly: true
      {{- with $v.agent.volumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: lanyard-config
    configMap:
      name: {{ include "lanyard.fullname" . }}-config
  # The agent's trust files (certificates only), written by Lanyard.
  - name: lanyard-share
    emptyDir:
      medium: Memory
      sizeLimit: 1Mi
  {{- if $v.ca.existingSecret }}
  - name: lanyard-ca-key
    secret:
      secretName: {{ $v.ca.existingSecret }}
      defaultMode: 0400
  {{- else }}
  # The CA key: memory only, mounted into the sidecar only.
  - name: lanyard-state
    emptyDir:
      medium: Memory
      sizeLimit: 1Mi
  {{- end }}
  - name: spiffe-workload-api
    {{- if eq $v.spiffe.socketSource "hostPath" }}
    hostPath:
      path: {{ $v.spiffe.hostPath }}
      type: Directory
    {{- else }}
    csi:
      driver: {{ $v.spiffe.csiDriver }}
      readOnly: true
    {{- end }}
  {{- if $v.lanyard.adminTokenSecret }}
  - name: lanyard-admin-token
    secret:
      secretName: {{ $v.lanyard.adminTokenSecret }}
      defaultMode: 0400
  {{- end }}
  {{- if $v.upstreamCa.configMap }}
  - name: lanyard-upstream-ca
    configMap:
      name: {{ $v.upstreamCa.configMap }}
  {{- else if $v.upstreamCa.secret }}
  - name: lanyard-upstream-ca
    secret:
      secretName: {{ $v.upstreamCa.secret }}
  {{- end }}
  {{- if $v.policyOverlay.configMap }}
  # Statements that narrow config's for this sandbox; the sidecar's alone.
  - name: lanyard-policy-overlay
    configMap:
      name: {{ $v.policyOverlay.configMap }}
  {{- end }}
  {{- with $v.volumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
