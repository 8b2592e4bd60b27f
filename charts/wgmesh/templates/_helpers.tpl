{{/* The first cluster CIDR (the agent's env) and the rest (extra --cluster-cidr arguments). */}}
{{- define "wgmesh.firstCIDR" -}}
{{- first .Values.clusterCIDRs -}}
{{- end -}}
