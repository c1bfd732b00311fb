{{/* Name of every object: the release name, cut to the 63 characters a label value allows. */}}
{{- define "lanyard.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lanyard.labels" -}}
app.kubernetes.io/name: lanyard
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- with .Values.workload.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "lanyard.selector" -}}
app.kubernetes.io/name: lanyard
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "lanyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "lanyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lanyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the pod. */}}
{{- define "lanyard.configDir" -}}/etc/lanyard{{- end -}}
{{- define "lanyard.shareDir" -}}/run/lanyard/share{{- end -}}
{{- define "lanyard.stateDir" -}}/run/lanyard/state{{- end -}}
{{- define "lanyard.socketDir" -}}/run/spiffe/workload-api{{- end -}}
{{- define "lanyard.caKeyDir" -}}/run/lanyard/ca-secret{{- end -}}
{{- define "lanyard.upstreamCaDir" -}}/run/lanyard/upstream-ca{{- end -}}
{{- define "lanyard.adminTokenDir" -}}/run/lanyard/admin-token{{- end -}}
{{- define "lanyard.policyOverlayDir" -}}/run/lanyard/policy-overlay{{- end -}}

{{/*
Refuses values that would weaken the sandbox. Each message names the value.
*/}}
{{- define "lanyard.validate" -}}
{{- $v := .Values -}}
{{- if not (has $v.mode (list "transparent" "explicit")) -}}
{{- fail (printf "mode: %q is not transparent or explicit" $v.mode) -}}
{{- end -}}
{{- if eq (int $v.agent.uid) (int $v.lanyard.uid) -}}
{{- fail (printf "agent.uid: the agent must not run as Lanyard's uid %d: its traffic would bypass the proxy" (int $v.lanyard.uid)) -}}
{{- end -}}
{{- if eq (int $v.agent.uid) 0 -}}
{{- fail "agent.uid: 0 is refused; the agent runs as an unprivileged uid" -}}
{{- end -}}
{{- if eq (int $v.lanyard.uid) 0 -}}
{{- fail "lanyard.uid: 0 would exempt every root process in the pod from redirection" -}}
{{- end -}}
{{- if or (eq (int $v.lanyard.adminPort) (int $v.lanyard.transparentPort)) (eq (int $v.lanyard.adminPort) (int $v.lanyard.explicitPort)) -}}
{{- fail (printf "lanyard.adminPort: %d is already the transparent or explicit port" (int $v.lanyard.adminPort)) -}}
{{- end -}}
{{- if not $v.agent.image -}}
{{- fail "agent.image: required (the sandbox's workload)" -}}
{{- end -}}
{{- range $key := list "listen" "transparent" "ca" "agent" "isolation" "admin" -}}
{{- if hasKey $v.config $key -}}
{{- fail (printf "config.%s: set by the chart (see values.yaml: lanyard.*, ca.*, mode)" $key) -}}
{{- end -}}
{{- end -}}
{{- if and $v.spiffe.id (not (hasPrefix "spiffe://" $v.spiffe.id)) -}}
{{- fail (printf "spiffe.id: %q is not a spiffe:// ID" $v.spiffe.id) -}}
{{- end -}}
{{- range $m := $v.agent.volumeMounts -}}
{{- if hasPrefix "/run/lanyard" $m.mountPath -}}
{{- fail (printf "agent.volumeMounts: %s is under /run/lanyard, which the chart manages" $m.mountPath) -}}
{{- end -}}
{{- end -}}
{{- range $vol := $v.volumes -}}
{{- if or (hasPrefix "lanyard-" $vol.name) (eq $vol.name "spiffe-workload-api") -}}
{{- fail (printf "volumes: the name %q is reserved for the chart's own volumes" $vol.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Lanyard's config file: the user's config plus what the chart owns. */}}
{{- define "lanyard.config" -}}
{{- $v := .Values -}}
{{- $cfg := deepCopy $v.config -}}
{{- $_ := set $cfg "listen" (printf "127.0.0.1:%d" (int $v.lanyard.explicitPort)) -}}
{{- if eq $v.mode "transparent" -}}
{{- $host := ternary "[::]" "0.0.0.0" $v.init.ipv6 -}}
{{- $_ := set $cfg "transparent" (dict "listen" (printf "%s:%d" $host (int $v.lanyard.transparentPort))) -}}
{{- end -}}
{{- $ca := dict "dir" (printf "%s/ca" (include "lanyard.shareDir" .)) -}}
{{- if $v.ca.existingSecret -}}
{{- $_ := set $ca "cert_file" (printf "%s/tls.crt" (include "lanyard.caKeyDir" .)) -}}
{{- $_ := set $ca "key_file" (printf "%s/tls.key" (include "lanyard.caKeyDir" .)) -}}
{{- else -}}
{{- $_ := set $ca "key_dir" (printf "%s/ca" (include "lanyard.stateDir" .)) -}}
{{- end -}}
{{- $_ := set $cfg "ca" $ca -}}
{{- $admin := dict "listen" (printf "%s:%d" (ternary "[::]" "0.0.0.0" $v.init.ipv6) (int $v.lanyard.adminPort)) -}}
{{- if $v.lanyard.adminTokenSecret -}}
{{- $_ := set $admin "token_file" (printf "%s/token" (include "lanyard.adminTokenDir" .)) -}}
{{- end -}}
{{- $_ := set $cfg "admin" $admin -}}
{{- $spiffe := deepCopy (default dict $cfg.spiffe) -}}
{{- $_ := set $spiffe "endpoint_socket" (printf "unix://%s/%s" (include "lanyard.socketDir" .) $v.spiffe.socketName) -}}
{{- if $v.spiffe.id -}}
{{- $_ := set $spiffe "id" $v.spiffe.id -}}
{{- end -}}
{{- $_ := set $cfg "spiffe" $spiffe -}}
{{- if or $v.upstreamCa.configMap $v.upstreamCa.secret -}}
{{- $tls := deepCopy (default dict (index $cfg "upstream_tls")) -}}
{{- $files := concat (default list (index $tls "extra_ca_files")) (list (printf "%s/%s" (include "lanyard.upstreamCaDir" .) $v.upstreamCa.key)) -}}
{{- $_ := set $tls "extra_ca_files" $files -}}
{{- $_ := set $cfg "upstream_tls" $tls -}}
{{- end -}}
{{- if $v.policyOverlay.configMap -}}
{{- $_ := set $cfg "overlays" (list (printf "%s/%s" (include "lanyard.policyOverlayDir" .) $v.policyOverlay.key)) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
