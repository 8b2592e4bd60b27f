{{/* The first cluster CIDR (the agent's env) and the rest (extra --cluster-cidr arguments). */}}
{{- define "wgmesh.firstCIDR" -}}
{{- first .Values.clusterCIDRs -}}
{{- end -}}

{{/* node.mtu / node.underlayInterface, for the agent and the CNI installer alike: the wg link and the pods must agree. */}}
{{- define "wgmesh.mtuArgs" -}}
{{- $args := list -}}
{{- with .Values.node.mtu }}{{ $args = append $args (printf "- --mtu=%d" (int .)) }}{{ end -}}
{{- with .Values.node.underlayInterface }}{{ $args = append $args (printf "- --underlay-interface=%s" .) }}{{ end -}}
{{- join "\n" $args -}}
{{- end -}}

{{/* 2^n as a decimal string (sprig has no pow); callers atoi it. */}}
{{- define "wgmesh.pow2" -}}
{{- $p := 1 -}}
{{- range until (int .) -}}{{- $p = mul $p 2 -}}{{- end -}}
{{- $p -}}
{{- end -}}

{{/*
Refuses clusterCIDRs the agent and operator would refuse (api/src/cidr.rs): set host bits, a
malformed or IPv4-mapped IPv6 address. The schema only checks their shape, and such a value
crash-loops every agent, so (the CNI plugin waits for a ready agent) no pod could start.
Sprig has no CIDR functions: the address is checked as a number, octet by octet or group by group.
*/}}
{{- define "wgmesh.checkClusterCIDRs" -}}
{{- range $cidr := .Values.clusterCIDRs -}}
{{- $addr := first (splitList "/" $cidr) -}}
{{- $prefix := atoi (last (splitList "/" $cidr)) -}}
{{- if contains ":" $addr -}}
{{- include "wgmesh.checkIPv6CIDR" (dict "cidr" $cidr "addr" (lower $addr) "prefix" $prefix) -}}
{{- else -}}
{{- include "wgmesh.checkIPv4CIDR" (dict "cidr" $cidr "addr" $addr "prefix" $prefix) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* IPv4: the 32-bit value must be a multiple of 2^(32-prefix). The schema already checked the octets. */}}
{{- define "wgmesh.checkIPv4CIDR" -}}
{{- if gt .prefix 32 -}}{{- fail (printf "clusterCIDRs: %s has a prefix longer than 32" .cidr) -}}{{- end -}}
{{- $value := 0 -}}
{{- range splitList "." .addr -}}{{- $value = add (mul $value 256) (atoi .) -}}{{- end -}}
{{- $block := atoi (include "wgmesh.pow2" (sub 32 .prefix)) -}}
{{- $net := sub $value (mod $value $block) -}}
{{- if ne $net $value -}}
{{- $masked := printf "%d.%d.%d.%d/%d" (div $net 16777216) (mod (div $net 65536) 256) (mod (div $net 256) 256) (mod $net 256) .prefix -}}
{{- fail (printf "clusterCIDRs: %s has host bits set (did you mean %s?)" .cidr $masked) -}}
{{- end -}}
{{- end -}}

{{/*
IPv6, parsed as Rust's Ipv6Addr does: at most one "::" standing for at least one zero group, an
optional dotted IPv4 tail, then exactly 8 groups of 1-4 hex digits. Groups past the prefix must be
zero and the group the prefix ends in a multiple of 2^(16 - prefix%16).
*/}}
{{- define "wgmesh.checkIPv6CIDR" -}}
{{- $bad := printf "clusterCIDRs: %s is not a valid IPv6 CIDR" .cidr -}}
{{- if gt .prefix 128 -}}{{- fail (printf "clusterCIDRs: %s has a prefix longer than 128" .cidr) -}}{{- end -}}
{{- $addr := .addr -}}
{{- /* a dotted IPv4 tail ("64:ff9b::10.0.0.0") becomes its two hex groups */ -}}
{{- $tail := last (splitList ":" $addr) -}}
{{- if contains "." $tail -}}
{{- if not (regexMatch "^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$" $tail) -}}{{- fail $bad -}}{{- end -}}
{{- $o := splitList "." $tail -}}
{{- $hex := printf "%x:%x" (add (mul (atoi (index $o 0)) 256) (atoi (index $o 1))) (add (mul (atoi (index $o 2)) 256) (atoi (index $o 3))) -}}
{{- $addr = printf "%s%s" (trimSuffix $tail $addr) $hex -}}
{{- end -}}
{{- $halves := splitList "::" $addr -}}
{{- if gt (len $halves) 2 -}}{{- fail $bad -}}{{- end -}}
{{- $head := list -}}{{- if first $halves -}}{{- $head = splitList ":" (first $halves) -}}{{- end -}}
{{- $rest := list -}}{{- if and (eq (len $halves) 2) (last $halves) -}}{{- $rest = splitList ":" (last $halves) -}}{{- end -}}
{{- $groups := $head -}}
{{- if eq (len $halves) 2 -}}
{{- /* "::" is at least one zero group */ -}}
{{- if gt (add (len $head) (len $rest)) 7 -}}{{- fail $bad -}}{{- end -}}
{{- range until (int (sub 8 (add (len $head) (len $rest)))) -}}{{- $groups = append $groups "0" -}}{{- end -}}
{{- $groups = concat $groups $rest -}}
{{- end -}}
{{- if ne (len $groups) 8 -}}{{- fail $bad -}}{{- end -}}
{{- $values := list -}}
{{- range $groups -}}
{{- if not (regexMatch "^[0-9a-f]{1,4}$" .) -}}{{- fail $bad -}}{{- end -}}
{{- $values = append $values (int64 (printf "0x%s" .)) -}}
{{- end -}}
{{- /* ::ffff:a.b.c.d: the agent wants the IPv4 CIDR itself */ -}}
{{- if and (eq (index $values 5) 65535) (eq 0 (add (index $values 0) (index $values 1) (index $values 2) (index $values 3) (index $values 4))) -}}
{{- fail (printf "clusterCIDRs: %s is an IPv4-mapped IPv6 CIDR; give the IPv4 CIDR instead" .cidr) -}}
{{- end -}}
{{- $masked := list -}}
{{- range $k, $g := $values -}}
{{- $hostBits := min 16 (max 0 (sub (mul 16 (add1 $k)) $.prefix)) -}}
{{- $masked = append $masked (sub $g (mod $g (atoi (include "wgmesh.pow2" $hostBits)))) -}}
{{- end -}}
{{- if ne (toJson $masked) (toJson $values) -}}
{{- fail (printf "clusterCIDRs: %s has host bits set (did you mean %s/%d?)" .cidr (include "wgmesh.formatIPv6" $masked) .prefix) -}}
{{- end -}}
{{- end -}}

{{/* 8 group values as RFC 5952 text (as the agent prints it): lowercase, the longest run of 2+ zero groups as "::". */}}
{{- define "wgmesh.formatIPv6" -}}
{{- $best := 0 -}}{{- $bestAt := 0 -}}{{- $run := 0 -}}
{{- range $k, $g := . -}}
{{- if eq $g 0 -}}
{{- $run = add1 $run -}}
{{- if gt $run $best -}}{{- $best = $run -}}{{- $bestAt = sub (add1 $k) $run -}}{{- end -}}
{{- else -}}
{{- $run = 0 -}}
{{- end -}}
{{- end -}}
{{- $hex := list -}}
{{- range . -}}{{- $hex = append $hex (printf "%x" .) -}}{{- end -}}
{{- if gt $best 1 -}}
{{- printf "%s::%s" (join ":" (slice $hex 0 (int $bestAt))) (join ":" (slice $hex (int (add $bestAt $best)))) -}}
{{- else -}}
{{- join ":" $hex -}}
{{- end -}}
{{- end -}}
