{{/* Labels every resource of the release carries. */}}
{{- define "retail.labels" -}}
app.kubernetes.io/part-of: retail-platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* A topic name: <prefix>.<region>.<kind>, as retail.kafka.Topics.topic. */}}
{{- define "retail.topic" -}}
{{- printf "%s.%s.%s" .prefix .region .kind -}}
{{- end }}

{{/* Kubernetes names cannot hold dots: the KafkaTopic resource is named after the topic with
dashes and carries the real name in spec.topicName. */}}
{{- define "retail.k8sName" -}}
{{- . | replace "." "-" | lower | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The shape checks the schema cannot express: refuse a topology the stack would refuse. */}}
{{- define "retail.validate" -}}
{{- range .Values.cassandra.datacenters }}
{{- if gt (int .replicationFactor) (int .nodes) }}
{{- fail (printf "cassandra.datacenters %s: replicationFactor %d exceeds its %d nodes: writes at QUORUM would fail. Lower the replication factor or add nodes (regenerate the values with `python -m retail.helm`)" .name (int .replicationFactor) (int .nodes)) }}
{{- end }}
{{- if gt (len .racks) (int .nodes) }}
{{- fail (printf "cassandra.datacenters %s: %d racks for %d nodes: a rack without a node; give each rack at least one node" .name (len .racks) (int .nodes)) }}
{{- end }}
{{- end }}
{{- $t := .Values.kafka.topics }}
{{- if gt (int $t.replicas) (int .Values.kafka.brokers) }}
{{- fail (printf "kafka.topics.replicas %d exceeds kafka.brokers %d: a topic cannot have more replicas than brokers" (int $t.replicas) (int .Values.kafka.brokers)) }}
{{- end }}
{{- if gt (int $t.minInsyncReplicas) (int $t.replicas) }}
{{- fail (printf "kafka.topics.minInsyncReplicas %d exceeds kafka.topics.replicas %d: every acks=all write would fail" (int $t.minInsyncReplicas) (int $t.replicas)) }}
{{- end }}
{{- if gt (int .Values.consumer.replicas) (int $t.partitions) }}
{{- fail (printf "consumer.replicas %d exceeds kafka.topics.partitions %d: the extra consumers would get no partition" (int .Values.consumer.replicas) (int $t.partitions)) }}
{{- end }}
{{- end }}

{{/* The keyspace replication map, as retail.topology.Topology.replication_cql. */}}
{{- define "retail.replication" -}}
{{- $parts := list "'class': 'NetworkTopologyStrategy'" }}
{{- range .Values.cassandra.datacenters }}
{{- $parts = append $parts (printf "'%s': %d" .name (int .replicationFactor)) }}
{{- end }}
{{- printf "{%s}" (join ", " $parts) -}}
{{- end }}
