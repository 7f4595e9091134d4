//! The documented default query set (`docs/prometheus-queries.md` describes
//! each one: what it needs in the cluster and what it produces).
//!
//! The queries are written for Zero to JupyterHub on Kubernetes with
//! kube-state-metrics, cAdvisor (the kubelet's `/metrics/cadvisor`) and the
//! kubelet's volume statistics, as the jupyterhub/grafana-dashboards use them.
//! Each aggregates by hub and user only, so no pod or claim name (which holds
//! the username) reaches a result. The hub and user label names are the
//! configured `hub_label` and `user_label`; a `user_label` starting with
//! `label_` is read from kube-state-metrics' `*_labels` series, any other from
//! `*_annotations`.

use super::{QuerySpec, ResourceField};

/// Sample name: CPU requested by each user's server containers, in cores.
pub const CPU_REQUEST: &str = "hub_user_cpu_request_cores";
/// Sample name: memory requested by each user's server containers, in bytes.
pub const MEMORY_REQUEST: &str = "hub_user_memory_request_bytes";
/// Sample name: CPU used by each user's server containers (rate between the
/// last two scrapes), in cores.
pub const CPU_USAGE: &str = "hub_user_cpu_usage_cores";
/// Sample name: working-set memory of each user's server containers, in bytes.
pub const MEMORY_USAGE: &str = "hub_user_memory_usage_bytes";
/// Sample name: size of each user's directory on a shared home volume, in bytes.
pub const HOME_SIZE: &str = "hub_user_home_bytes";
/// Sample name: bytes used on each user's own home volume (a per-user claim).
pub const VOLUME_USED: &str = "hub_user_volume_used_bytes";
/// Sample name: available fraction of each shared volume (home NFS, hub database).
pub const VOLUME_AVAILABLE: &str = "hub_volume_available_ratio";

/// The label `prometheus-dirsize-exporter` names a home directory with.
pub const DIRSIZE_DIRECTORY_LABEL: &str = "directory";

/// The default queries for these hub and user label names.
pub fn default_queries(hub_label: &str, user_label: &str) -> Vec<QuerySpec> {
    let h = hub_label;
    let u = user_label;
    let kind = if user_label.starts_with("label_") {
        "labels"
    } else {
        "annotations"
    };
    // Each user pod's (hub, pod, user), to join container series onto.
    let pods = format!("group by ({h}, pod, {u}) (kube_pod_{kind}{{{u}!=\"\"}})");
    let per_user = |series: String| {
        format!("sum by ({h}, {u}) ({series} * on ({h}, pod) group_left({u}) {pods})")
    };
    vec![
        QuerySpec {
            name: CPU_REQUEST.to_string(),
            query: per_user("kube_pod_container_resource_requests{resource=\"cpu\"}".to_string()),
            user_label: None,
            resource: Some(ResourceField::CpuRequestCores),
        },
        QuerySpec {
            name: MEMORY_REQUEST.to_string(),
            query: per_user(
                "kube_pod_container_resource_requests{resource=\"memory\"}".to_string(),
            ),
            user_label: None,
            resource: Some(ResourceField::MemoryRequestBytes),
        },
        QuerySpec {
            name: CPU_USAGE.to_string(),
            // container!="" and !="POD" leave out the pod-level cgroup and the
            // pause container, which would count the same CPU twice. irate,
            // as the jupyterhub/grafana-dashboards use: rate() over 5m
            // under-reports a server younger than the window.
            query: per_user(
                "irate(container_cpu_usage_seconds_total{container!=\"\", container!=\"POD\"}[5m])"
                    .to_string(),
            ),
            user_label: None,
            resource: Some(ResourceField::CpuUsageCores),
        },
        QuerySpec {
            name: MEMORY_USAGE.to_string(),
            query: per_user(
                "container_memory_working_set_bytes{container!=\"\", container!=\"POD\"}"
                    .to_string(),
            ),
            user_label: None,
            resource: Some(ResourceField::MemoryUsageBytes),
        },
        QuerySpec {
            name: HOME_SIZE.to_string(),
            query: format!("max by ({h}, {DIRSIZE_DIRECTORY_LABEL}) (dirsize_total_size_bytes)"),
            user_label: Some(DIRSIZE_DIRECTORY_LABEL.to_string()),
            resource: Some(ResourceField::StorageBytes),
        },
        QuerySpec {
            name: VOLUME_USED.to_string(),
            query: format!(
                "max by ({h}, {u}) (kubelet_volume_stats_used_bytes \
                 * on ({h}, persistentvolumeclaim) group_left({u}) \
                 group by ({h}, persistentvolumeclaim, {u}) \
                 (kube_persistentvolumeclaim_{kind}{{{u}!=\"\"}}))"
            ),
            user_label: None,
            resource: Some(ResourceField::StorageBytes),
        },
        QuerySpec {
            name: VOLUME_AVAILABLE.to_string(),
            // Per-user claims (`claim-<user>`) are named after the user and
            // are covered per user above; only shared volumes are kept here.
            query: format!(
                "min by ({h}, persistentvolumeclaim) (\
                 kubelet_volume_stats_available_bytes{{persistentvolumeclaim!~\"claim-.*\"}} \
                 / kubelet_volume_stats_capacity_bytes{{persistentvolumeclaim!~\"claim-.*\"}})"
            ),
            user_label: None,
            resource: None,
        },
    ]
}
