{{/*
Helpers shared by every template. Booleans come back as "true" or "" (include returns strings),
so callers test them with `if (include ...)`. Numbers from values are float64 after Helm's YAML
parse: templates pass them through `int` before printing or comparing.
*/}}

{{/* The chart name, for app.kubernetes.io/name. */}}
{{- define "tasklane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
"<release>-tasklane", the prefix of every object name; never collapsed when the release name
already contains "tasklane", so names stay predictable (kubectl scale deploy/<release>-tasklane-worker).
Cut to 48 characters: "<fullname>-redis-headless" must still be a 63-character DNS label.
*/}}
{{- define "tasklane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* name-version for the helm.sh/chart label. */}}
{{- define "tasklane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels of one component; these never change between chart versions or modes (a
Deployment's selector is immutable, and the api Service must keep its pods on upgrade).
call like: include "tasklane.selectorLabels" (list . "api")
*/}}
{{- define "tasklane.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tasklane.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
Standard labels of one component's objects.
call like: include "tasklane.labels" (list . "worker")
*/}}
{{- define "tasklane.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "tasklane.chart" $root }}
{{ include "tasklane.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: tasklane
{{- end -}}

{{/* The app image: repository@digest when a digest is pinned, else repository:tag. */}}
{{- define "tasklane.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount every pod of the release runs as. */}}
{{- define "tasklane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tasklane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Object names: every name is "<fullname>-<suffix>" and is written here only, so templates, NOTES
and the api's env agree, and `tasklane scale` can find objects by label instead of by name.
call like: include "tasklane.worker.fullname" .
--------------------------------------------------------------------------------------- */}}

{{/* "<fullname>-<suffix>". call like: include "tasklane.componentName" (list . "api") */}}
{{- define "tasklane.componentName" -}}
{{- printf "%s-%s" (include "tasklane.fullname" (index . 0)) (index . 1) -}}
{{- end -}}

{{/* The api's Deployment, Service, PDB, Role, RoleBinding, ServiceMonitor, Ingress, NetworkPolicy. */}}
{{- define "tasklane.api.fullname" -}}
{{- include "tasklane.componentName" (list . "api") -}}
{{- end -}}

{{/* The default pool's worker Deployment (celery.worker) and what scales, disrupts or scrapes it (ScaledObject, HPA, PDB, PodMonitor). */}}
{{- define "tasklane.worker.fullname" -}}
{{- include "tasklane.componentName" (list . "worker") -}}
{{- end -}}

{{/*
One pool's Deployment, ScaledObject, HPA and PDB: the default pool keeps "<fullname>-worker",
a pool of celery.workerPools is "<fullname>-worker-<pool name>".
call like: include "tasklane.workerPool.fullname" (list . $pool)
*/}}
{{- define "tasklane.workerPool.fullname" -}}
{{- $root := index . 0 -}}
{{- $pool := index . 1 -}}
{{- if $pool.isDefault -}}
{{- include "tasklane.worker.fullname" $root -}}
{{- else -}}
{{- printf "%s-%s" (include "tasklane.worker.fullname" $root) $pool.name -}}
{{- end -}}
{{- end -}}

{{/* The NetworkPolicy covering worker and beat pods. */}}
{{- define "tasklane.workers.networkPolicyName" -}}
{{- include "tasklane.componentName" (list . "workers") -}}
{{- end -}}

{{/* The beat Deployment. */}}
{{- define "tasklane.beat.fullname" -}}
{{- include "tasklane.componentName" (list . "beat") -}}
{{- end -}}

{{/* The bundled Redis: StatefulSet, Service (the host in every URL), NetworkPolicy. */}}
{{- define "tasklane.redis.fullname" -}}
{{- include "tasklane.componentName" (list . "redis") -}}
{{- end -}}

{{/* The bundled Redis's headless Service (the StatefulSet's serviceName). */}}
{{- define "tasklane.redis.headlessName" -}}
{{- include "tasklane.componentName" (list . "redis-headless") -}}
{{- end -}}

{{/* KEDA's TriggerAuthentication holding the Redis password reference (bundled or external Redis). */}}
{{- define "tasklane.worker.triggerAuthenticationName" -}}
{{- include "tasklane.componentName" (list . "redis") -}}
{{- end -}}

{{/* The hook Job that generates the release's missing Secrets, and its ServiceAccount, Role and RoleBinding. */}}
{{- define "tasklane.secretsJob.fullname" -}}
{{- include "tasklane.componentName" (list . "secrets") -}}
{{- end -}}

{{/* The Grafana dashboard ConfigMap. */}}
{{- define "tasklane.dashboard.fullname" -}}
{{- include "tasklane.componentName" (list . "dashboard") -}}
{{- end -}}

{{/* Name of the ConfigMap holding the non-secret settings. */}}
{{- define "tasklane.configMapName" -}}
{{- include "tasklane.componentName" (list . "config") -}}
{{- end -}}

{{/* Secret and key holding the api bearer token: the user's Secret, else the chart's own. */}}
{{- define "tasklane.api.tokenSecretName" -}}
{{- default (include "tasklane.componentName" (list . "api-token")) .Values.api.existingTokenSecret -}}
{{- end -}}

{{- define "tasklane.api.tokenSecretKey" -}}
{{- if .Values.api.existingTokenSecret -}}{{ .Values.api.existingTokenSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/*
The Secrets nobody supplied, which the hook Job (secrets-job.yaml) generates once in the
cluster, as JSON {"<secret>": {"<key>": <length>}}: the api token unless api.token or
api.existingTokenSecret gives it, the bundled Redis's password unless redis.auth.existingSecret
does. "{}": nothing to generate, no Job. Keys come out sorted, so the render is stable.
call like: include "tasklane.generatedSecrets" . | fromJson
*/}}
{{- define "tasklane.generatedSecrets" -}}
{{- $secrets := dict -}}
{{- if not (or .Values.api.token .Values.api.existingTokenSecret) -}}
{{- $_ := set $secrets (include "tasklane.api.tokenSecretName" .) (dict (include "tasklane.api.tokenSecretKey" .) 40) -}}
{{- end -}}
{{- if and (include "tasklane.redis.bundled" .) (not .Values.redis.auth.existingSecret) -}}
{{- /* Alphanumeric (as every generated value): it is spliced into redis:// URLs unescaped. */ -}}
{{- $_ := set $secrets (include "tasklane.redis.secretName" .) (dict (include "tasklane.redis.secretKey" .) 32) -}}
{{- end -}}
{{- toJson $secrets -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Mode: which executor and store the api runs with (TASKLANE_EXECUTOR / TASKLANE_STORE).
--------------------------------------------------------------------------------------- */}}

{{/* "memory" or "redis": store=auto follows the mode (Celery workers need a shared store). */}}
{{- define "tasklane.store" -}}
{{- if eq .Values.store "auto" -}}
{{- ternary "redis" "memory" .Values.celery.enabled -}}
{{- else -}}
{{- .Values.store -}}
{{- end -}}
{{- end -}}

{{/* "background" in single mode; celery.executor (hybrid by default) in scaled mode. */}}
{{- define "tasklane.executor" -}}
{{- if .Values.celery.enabled -}}{{ .Values.celery.executor }}{{- else -}}background{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Redis: bundled (StatefulSet + generated password) or external (redis.external.url).
--------------------------------------------------------------------------------------- */}}

{{/* "true" when some process needs Redis: the broker of scaled mode, or the record store. */}}
{{- define "tasklane.redis.needed" -}}
{{- if or .Values.celery.enabled (eq (include "tasklane.store" .) "redis") -}}true{{- end -}}
{{- end -}}

{{/* "true" when the chart runs its own Redis: needed, enabled, and no external URL given. */}}
{{- define "tasklane.redis.bundled" -}}
{{- if and (include "tasklane.redis.needed" .) .Values.redis.enabled (not .Values.redis.external.url) -}}true{{- end -}}
{{- end -}}

{{/* host:port of Redis (KEDA's addressFromEnv); an external URL without a port means 6379. */}}
{{- define "tasklane.redis.address" -}}
{{- if .Values.redis.external.url -}}
{{- $host := (urlParse .Values.redis.external.url).host -}}
{{- if regexMatch ":[0-9]+$" $host -}}{{ $host }}{{- else -}}{{ printf "%s:6379" $host }}{{- end -}}
{{- else -}}
{{- printf "%s:6379" (include "tasklane.redis.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Database index: the external URL's path ("/3" -> 3), else 0. */}}
{{- define "tasklane.redis.db" -}}
{{- if .Values.redis.external.url -}}
{{- default "0" (trimPrefix "/" (urlParse .Values.redis.external.url).path) -}}
{{- else -}}0{{- end -}}
{{- end -}}

{{/* "rediss" (TLS) or "redis". */}}
{{- define "tasklane.redis.scheme" -}}
{{- if .Values.redis.external.url -}}{{ (urlParse .Values.redis.external.url).scheme }}{{- else -}}redis{{- end -}}
{{- end -}}

{{/* ACL user name of an external URL (redis://user@host), else empty. */}}
{{- define "tasklane.redis.username" -}}
{{- if .Values.redis.external.url -}}{{ (urlParse .Values.redis.external.url).userinfo }}{{- end -}}
{{- end -}}

{{/* "true" when Redis wants a password: always for the bundled one, when a Secret is named for an external one. */}}
{{- define "tasklane.redis.hasPassword" -}}
{{- if include "tasklane.redis.bundled" . -}}true
{{- else if .Values.redis.external.existingSecret -}}true
{{- end -}}
{{- end -}}

{{/* Secret and key holding the Redis password. */}}
{{- define "tasklane.redis.secretName" -}}
{{- if include "tasklane.redis.bundled" . -}}
{{- default (include "tasklane.componentName" (list . "redis-auth")) .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- .Values.redis.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "tasklane.redis.secretKey" -}}
{{- if include "tasklane.redis.bundled" . -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretKey }}{{- else -}}password{{- end -}}
{{- else -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{/*
The Redis URL the app reads (REDIS_URL, CELERY_BROKER_URL). The password is the literal text
$(REDIS_PASSWORD): Kubernetes substitutes the REDIS_PASSWORD variable (a secretKeyRef defined
earlier in the same env list) when it starts the container, so the value never appears in the
pod spec, a ConfigMap or `helm get values`.
*/}}
{{- define "tasklane.redis.url" -}}
{{- $user := include "tasklane.redis.username" . -}}
{{- $auth := "" -}}
{{- if include "tasklane.redis.hasPassword" . -}}
{{- $auth = printf "%s:$(REDIS_PASSWORD)@" $user -}}
{{- else if $user -}}
{{- $auth = printf "%s@" $user -}}
{{- end -}}
{{- printf "%s://%s%s/%s" (include "tasklane.redis.scheme" .) $auth (include "tasklane.redis.address" .) (include "tasklane.redis.db" .) -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Workers: who owns the replica count, how long a pod may take to stop.
--------------------------------------------------------------------------------------- */}}

{{/* ---------------------------------------------------------------------------------------
Worker pools: the default pool (celery.worker, unless celery.worker.enabled=false) and every
entry of celery.workerPools, each deep-merged over celery.worker (as the Airflow chart's
workers.celery.sets over workers.celery): a field a pool leaves out is celery.worker's; a map
is merged key by key (resources.requests.cpu alone keeps celery.worker's memory; an empty map
adds nothing), a list or a number the pool sets replaces celery.worker's (an empty list too).
--------------------------------------------------------------------------------------- */}}

{{/* The name (and tasklane.io/pool label value) of the pool celery.worker describes. */}}
{{- define "tasklane.worker.defaultPoolName" -}}default{{- end -}}

{{/*
The pools to render, as JSON [pool]: each a celery.worker-shaped dict plus name and isDefault.
Empty unless celery.enabled.
call like: include "tasklane.workerPools" . | fromJsonArray
*/}}
{{- define "tasklane.workerPools" -}}
{{- $pools := list -}}
{{- if .Values.celery.enabled -}}
{{- $base := omit .Values.celery.worker "enabled" -}}
{{- if ne (index .Values.celery.worker "enabled") false -}}
{{- $pools = append $pools (merge (dict "name" (include "tasklane.worker.defaultPoolName" .) "isDefault" true) (deepCopy $base)) -}}
{{- end -}}
{{- range .Values.celery.workerPools -}}
{{- $pools = append $pools (set (mergeOverwrite (deepCopy $base) (deepCopy .)) "isDefault" false) -}}
{{- end -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/*
Labels of one pool's objects and pods: the worker component's plus tasklane.io/pool, which
`tasklane scale --pool` and the api's watch select by.
call like: include "tasklane.workerPool.labels" (list . $pool)
*/}}
{{- define "tasklane.workerPool.labels" -}}
{{ include "tasklane.labels" (list (index . 0) "worker") }}
tasklane.io/pool: {{ (index . 1).name }}
{{- end -}}

{{/*
A pool Deployment's selector (immutable). The default pool keeps the selector it always had
(component=worker), so upgrading an existing release keeps its Deployment; other pools add
their tasklane.io/pool.
*/}}
{{- define "tasklane.workerPool.deploymentSelector" -}}
{{ include "tasklane.selectorLabels" (list (index . 0) "worker") }}
{{- if not (index . 1).isDefault }}
tasklane.io/pool: {{ (index . 1).name }}
{{- end }}
{{- end -}}

{{/*
The pods of exactly one pool (PDB selector): with the pool label always, so a pod never falls
under two PodDisruptionBudgets (the eviction API refuses such pods, blocking drains).
*/}}
{{- define "tasklane.workerPool.podSelector" -}}
{{ include "tasklane.selectorLabels" (list (index . 0) "worker") }}
tasklane.io/pool: {{ (index . 1).name }}
{{- end -}}

{{/*
"keda", "hpa" or "" (nobody: a fixed count or kubectl scale) for one pool. KEDA counts only
when its ScaledObject is actually rendered: the cluster serves keda.sh/v1alpha1 or keda.force.
call like: include "tasklane.workerPool.autoscaler" (list . $pool)
*/}}
{{- define "tasklane.workerPool.autoscaler" -}}
{{- $root := index . 0 -}}
{{- $a := (index . 1).autoscaling -}}
{{- if $root.Values.celery.enabled -}}
{{- if and $a.keda.enabled (or $a.keda.force ($root.Capabilities.APIVersions.Has "keda.sh/v1alpha1")) -}}
keda
{{- else if $a.hpa.enabled -}}
hpa
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The autoscaler of celery.worker (the default pool's settings, NOTES). */}}
{{- define "tasklane.worker.autoscaler" -}}
{{- include "tasklane.workerPool.autoscaler" (list . .Values.celery.worker) -}}
{{- end -}}

{{/*
The labelSelector of every worker pool's Deployment of this release (the api's watch,
TASKLANE_WORKER_SELECTOR; `tasklane scale --release` builds the same one: app/core/kubernetes/
scaling.py release_worker_selector, and tests/unit/test_kube_watch.py checks they agree).
*/}}
{{- define "tasklane.worker.selector" -}}
app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/component=worker
{{- end -}}

{{/* "true" when some pool's ScaledObject is rendered (TriggerAuthentication, Redis NetworkPolicy). */}}
{{- define "tasklane.workers.useKeda" -}}
{{- range include "tasklane.workerPools" $ | fromJsonArray -}}
{{- if eq (include "tasklane.workerPool.autoscaler" (list $ .)) "keda" -}}true{{- break -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when KEDA may take this pool to zero. call like: include "tasklane.workerPool.scalesFromZero" (list . $pool) */}}
{{- define "tasklane.workerPool.scalesFromZero" -}}
{{- if and (eq (include "tasklane.workerPool.autoscaler" .) "keda") (eq (int (index . 1).autoscaling.keda.minReplicaCount) 0) -}}true{{- end -}}
{{- end -}}

{{/*
"true" when KEDA may take every pool to zero (TASKLANE_SCALE_FROM_ZERO, the api's answer while
it has no Kubernetes data): the api then queues heavy tasks instead of running them
in-process. One pool that cannot start from zero makes it false: running a task in the api is
the safe fallback, queueing it for a pool nobody starts is not.
*/}}
{{- define "tasklane.worker.scalesFromZero" -}}
{{- $pools := include "tasklane.workerPools" . | fromJsonArray -}}
{{- $all := gt (len $pools) 0 -}}
{{- range $pools -}}
{{- if not (include "tasklane.workerPool.scalesFromZero" (list $ .)) -}}{{- $all = false -}}{{- end -}}
{{- end -}}
{{- if $all -}}true{{- end -}}
{{- end -}}

{{/*
Seconds Celery's hard time limit allows beyond a task's timeout. The one number the chart and
the workers share: the ConfigMap passes it as TASKLANE_TIME_LIMIT_MARGIN (app/config.py
time_limit_margin, which Celery's time_limit uses), and the grace period below is sized from it.
*/}}
{{- define "tasklane.worker.timeLimitMarginSeconds" -}}30{{- end -}}

{{/* The longest a task may run on a worker: tasks.timeoutSeconds plus the hard-limit margin. */}}
{{- define "tasklane.worker.longestTaskSeconds" -}}
{{- add (int .Values.tasks.timeoutSeconds) (int (include "tasklane.worker.timeLimitMarginSeconds" .)) -}}
{{- end -}}

{{/*
Seconds a worker pod gets between SIGTERM and SIGKILL: Celery's warm shutdown lets running
tasks finish, and a task may run for tasklane.worker.longestTaskSeconds; null means that plus
30 s for the shutdown itself (tasks.timeoutSeconds + 60 with the default margin).
call like: include "tasklane.workerPool.terminationGracePeriodSeconds" (list . $pool)
*/}}
{{- define "tasklane.workerPool.terminationGracePeriodSeconds" -}}
{{- $root := index . 0 -}}
{{- /* index, not a field: Helm drops keys whose value is null, and lint --strict would fail on them */ -}}
{{- $grace := index (index . 1) "terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" $grace -}}
{{- add (int (include "tasklane.worker.longestTaskSeconds" $root)) 30 -}}
{{- else -}}
{{- int $grace -}}
{{- end -}}
{{- end -}}

{{/* A KEDA trigger name / formula identifier for a queue: anything but [A-Za-z0-9_] becomes "_". */}}
{{- define "tasklane.queueIdentifier" -}}
{{- regexReplaceAll "[^A-Za-z0-9_]" . "_" -}}
{{- end -}}

{{/*
The Redis lists kombu keeps one Celery queue's messages in, as JSON [{suffix, list}]: the base
list (priorities 0-2) and one sub-list per higher priority step, `Q:3` (3-5), `Q:6` (6-8), `Q:9`.
The steps and the ":" separator are the app's (app.core.tasks.broker_layout.BROKER_LAYOUT, the
broker_transport_options of every api and worker); tests/chart/test_keda.py checks they agree.
`suffix` tells the lists' KEDA triggers apart (queued_Q, queued_Q_p3, ...).
call like: include "tasklane.queueLists" "heavy" | fromJsonArray
*/}}
{{- define "tasklane.queueLists" -}}
{{- $queue := . -}}
{{- $lists := list -}}
{{- range $step := list 0 3 6 9 -}}
{{- if eq $step 0 -}}
{{- $lists = append $lists (dict "suffix" "" "list" $queue) -}}
{{- else -}}
{{- $lists = append $lists (dict "suffix" (printf "_p%d" $step) "list" (printf "%s:%d" $queue $step)) -}}
{{- end -}}
{{- end -}}
{{- toJson $lists -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Pods: env, checksums, shared volumes.
--------------------------------------------------------------------------------------- */}}

{{/*
The env list of an app container (api, worker or beat), after envFrom the ConfigMap. Only
references to Secrets and URLs built from them live here; every plain setting is in the
ConfigMap. REDIS_PASSWORD comes first: $(VAR) expands only from entries defined before it.
call like: include "tasklane.env" (list . "worker")
*/}}
{{- define "tasklane.env" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- if include "tasklane.redis.needed" $root }}
{{- if include "tasklane.redis.hasPassword" $root }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tasklane.redis.secretName" $root }}
      key: {{ include "tasklane.redis.secretKey" $root }}
{{- end }}
- name: REDIS_URL
  value: {{ include "tasklane.redis.url" $root | quote }}
{{- if $root.Values.celery.enabled }}
- name: CELERY_BROKER_URL
  value: {{ include "tasklane.redis.url" $root | quote }}
{{- end }}
{{- end }}
{{- if and (eq $component "api") (include "tasklane.api.watchesKubernetes" $root) }}
# The api follows the worker Deployments with these labels, one per pool (and the ScaledObject
# targeting each) with the Role below; TASKLANE_KUBERNETES stays auto: on inside a cluster, off
# when the container runs elsewhere.
- name: TASKLANE_WORKER_SELECTOR
  value: {{ include "tasklane.worker.selector" $root | quote }}
{{- end }}
{{- if eq $component "api" }}
- name: TASKLANE_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "tasklane.api.tokenSecretName" $root }}
      key: {{ include "tasklane.api.tokenSecretKey" $root }}
{{- end }}
{{- if eq $component "worker" }}
- name: TASKLANE_WORKER_METRICS_PORT
  value: {{ int $root.Values.celery.worker.metricsPort | quote }}
# Read by KEDA, not by the app: the ScaledObject's triggers take Redis's host:port from this
# container (addressFromEnv + envSourceContainerName), so the address is written down once.
- name: REDIS_ADDRESS
  value: {{ include "tasklane.redis.address" $root | quote }}
{{- end }}
{{- with $root.Values.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Pod annotations that roll the pods when their settings change. checksum/secret only when the
user gives the token (api.token): generated values never appear in a render (the hook Job makes
them in the cluster), so nothing random can end up in a checksum and restart pods on every
GitOps sync.
call like: include "tasklane.checksums" .
*/}}
{{- define "tasklane.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- $given := include (print .Template.BasePath "/api-token-secret.yaml") . }}
{{- if trim $given }}
checksum/secret: {{ $given | sha256sum }}
{{- end }}
{{- end -}}

{{/*
Volumes of an app pod: the root file system is read-only, so /tmp is an emptyDir, and the
prometheus-client multiprocess directory is one of its own so it exists before the app starts.
*/}}
{{- define "tasklane.appVolumes" -}}
- name: tmp
  emptyDir: {}
- name: metrics
  emptyDir: {}
{{- end -}}

{{- define "tasklane.appVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: metrics
  mountPath: /tmp/tasklane-metrics
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Validation: combinations that cannot work fail the render with the value to change.
Included once from configmap.yaml, which every release renders.
--------------------------------------------------------------------------------------- */}}
{{- define "tasklane.validate" -}}
{{- $store := include "tasklane.store" . -}}
{{- if and (eq $store "memory") (gt (int .Values.api.replicas) 1) -}}
{{- fail (printf "api.replicas=%d needs a shared store: with store=memory every api pod keeps its own task records, so a status request can reach a pod that never saw the task. Set store=redis (or celery.enabled=true), or api.replicas=1." (int .Values.api.replicas)) -}}
{{- end -}}
{{- if and (eq $store "memory") (gt (int .Values.api.workers) 1) -}}
{{- fail (printf "api.workers=%d needs a shared store: with store=memory every uvicorn process keeps its own task records. Set store=redis (or celery.enabled=true), or api.workers=1." (int .Values.api.workers)) -}}
{{- end -}}
{{- if and .Values.celery.enabled (eq $store "memory") -}}
{{- fail "celery.enabled=true with store=memory: Celery workers cannot see the api's in-memory records. Use store=auto or store=redis." -}}
{{- end -}}
{{- if and (include "tasklane.redis.needed" .) (not .Values.redis.enabled) (not .Values.redis.external.url) -}}
{{- fail "Redis is needed (celery.enabled=true or store=redis) but redis.enabled=false and redis.external.url is empty: enable the bundled Redis or set redis.external.url." -}}
{{- end -}}
{{- if .Values.redis.external.url -}}
{{- $url := urlParse .Values.redis.external.url -}}
{{- if contains ":" $url.userinfo -}}
{{- fail "redis.external.url must not contain a password (it would be written into pod specs): put it in a Secret and set redis.external.existingSecret." -}}
{{- end -}}
{{- end -}}
{{- if ge (int .Values.api.shutdownGraceSeconds) (int .Values.api.terminationGracePeriodSeconds) -}}
{{- fail (printf "api.shutdownGraceSeconds=%d must be below api.terminationGracePeriodSeconds=%d, or the kubelet kills the api before it marks unfinished tasks Interrupted." (int .Values.api.shutdownGraceSeconds) (int .Values.api.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- if .Values.celery.enabled -}}
{{- include "tasklane.validateWorkerPools" . -}}
{{- end -}}
{{- end -}}

{{/*
The worker pools: names unique (none named like the default pool), every queue tasks route to
consumed by some pool, and each pool's own settings sound. Tasks surely route to a queue
when celery.executor=celery (every task goes to celery.lightQueue or heavyQueue) and, with
the hybrid executor, to celery.heavyQueue when every pool scales from zero (the api then queues
heavy tasks rather than run them itself). Otherwise the hybrid executor sends a task to Celery
only while a live worker consumes its queue, and runs it in-process else. Messages name the pool's values path (celery.worker or celery.workerPools[name]).
*/}}
{{- define "tasklane.validateWorkerPools" -}}
{{- $pools := include "tasklane.workerPools" . | fromJsonArray -}}
{{- $default := include "tasklane.worker.defaultPoolName" . -}}
{{- $seen := dict -}}
{{- range .Values.celery.workerPools -}}
{{- if eq .name $default -}}
{{- fail (printf "celery.workerPools: a pool is named %q, the name of the default pool (celery.worker); its objects and tasklane.io/pool label would be ambiguous. Rename it." $default) -}}
{{- end -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "celery.workerPools: two pools are named %q; each pool needs its own name (its Deployment is <fullname>-worker-<name>)." .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- if not $pools -}}
{{- fail "celery.enabled=true but there is no worker pool: celery.worker.enabled=false and celery.workerPools is empty. Enable the default pool or add a pool." -}}
{{- end -}}
{{- $consumed := dict -}}
{{- range $pools -}}
{{- range .queues -}}{{- $_ := set $consumed . true -}}{{- end -}}
{{- end -}}
{{- $routed := list -}}
{{- if eq .Values.celery.executor "celery" -}}
{{- $routed = list .Values.celery.lightQueue .Values.celery.heavyQueue -}}
{{- else if include "tasklane.worker.scalesFromZero" . -}}
{{- $routed = list .Values.celery.heavyQueue -}}
{{- end -}}
{{- range $queue := $routed -}}
{{- if not (hasKey $consumed $queue) -}}
{{- fail (printf "queue %q is consumed by no worker pool, but tasks route to it (celery.executor=celery sends every task to celery.lightQueue or heavyQueue; with every pool scaling from zero the hybrid executor queues heavy tasks for celery.heavyQueue instead of running them in the api): add it to the queues of celery.worker (with celery.worker.enabled=true) or of a pool in celery.workerPools." $queue) -}}
{{- end -}}
{{- end -}}
{{- range $pool := $pools -}}
{{- $path := ternary "celery.worker" (printf "celery.workerPools[%s]" $pool.name) $pool.isDefault -}}
{{- $autoscaling := $pool.autoscaling -}}
{{- if and $autoscaling.keda.enabled $autoscaling.hpa.enabled -}}
{{- fail (printf "%s.autoscaling: keda.enabled and hpa.enabled are both true, and two autoscalers would fight over the worker replicas. Use one: --set %s.autoscaling.keda.enabled=false for the CPU HPA, or leave hpa.enabled=false for KEDA." $path $path) -}}
{{- end -}}
{{- $grace := int (include "tasklane.workerPool.terminationGracePeriodSeconds" (list $ $pool)) -}}
{{- $needed := int (include "tasklane.worker.longestTaskSeconds" $) -}}
{{- if lt $grace $needed -}}
{{- fail (printf "%s.terminationGracePeriodSeconds=%d is too short: a task may run tasks.timeoutSeconds=%d plus Celery's %s s hard-limit margin, so workers need at least %d s to finish on SIGTERM." $path $grace (int $.Values.tasks.timeoutSeconds) (include "tasklane.worker.timeLimitMarginSeconds" $) $needed) -}}
{{- end -}}
{{- $autoscaler := include "tasklane.workerPool.autoscaler" (list $ $pool) -}}
{{- if eq $autoscaler "keda" -}}
{{- if le (int $autoscaling.keda.cooldownPeriod) $grace -}}
{{- fail (printf "%s.autoscaling.keda.cooldownPeriod=%d must exceed the worker termination grace period (%d s): scaling to zero sooner could stop a worker that is still finishing its last task." $path (int $autoscaling.keda.cooldownPeriod) $grace) -}}
{{- end -}}
{{- if gt (int $autoscaling.keda.minReplicaCount) (int $autoscaling.keda.maxReplicaCount) -}}
{{- fail (printf "%s.autoscaling.keda.minReplicaCount must not exceed maxReplicaCount." $path) -}}
{{- end -}}
{{- end -}}
{{- if eq $autoscaler "hpa" -}}
{{- if gt (int $autoscaling.hpa.minReplicas) (int $autoscaling.hpa.maxReplicas) -}}
{{- fail (printf "%s.autoscaling.hpa.minReplicas must not exceed maxReplicas." $path) -}}
{{- end -}}
{{- if not (dig "requests" "cpu" "" $pool.resources) -}}
{{- fail (printf "%s.autoscaling.hpa needs %s.resources.requests.cpu: CPU utilization is measured against the request." $path $path) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Does the api watch the worker Deployment / ScaledObject (scaled mode with rbac.create)?
call like: include "tasklane.api.watchesKubernetes" .  ("true" or "")
*/}}
{{- define "tasklane.api.watchesKubernetes" -}}
{{- if and .Values.celery.enabled .Values.rbac.create -}}true{{- end -}}
{{- end -}}
