//! The checked-in dashboards are the generator's output, pass the lint, and
//! the lint catches each rule broken.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{boards, lint, promql, queries, substitute};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Every `*.json` in `dashboards/`, sorted, with its text.
fn files() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir())
        .expect("read dashboards/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, std::fs::read_to_string(&p).expect("read a dashboard"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn checked_in_dashboards_are_the_generated_ones() {
    let boards = boards::all();
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        for b in &boards {
            std::fs::write(dir().join(b.file), b.render()).expect("write a dashboard");
        }
    }
    let on_disk = files();
    let mut want: Vec<(String, String)> = boards
        .iter()
        .map(|b| (b.file.to_string(), b.render()))
        .collect();
    want.sort();
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&on_disk),
        names(&want),
        "dashboards/*.json are not the generated set: run UPDATE_GENERATED=1 cargo test -p hubwatch-dashboards"
    );
    for ((name, text), (_, generated)) in on_disk.iter().zip(&want) {
        assert!(
            text == generated,
            "dashboards/{name} is stale: run UPDATE_GENERATED=1 cargo test -p hubwatch-dashboards"
        );
    }
}

#[test]
fn uids_and_titles_are_stable() {
    let got: Vec<(&str, &str, &str)> = boards::all()
        .iter()
        .map(|b| (b.file, b.uid, b.title))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "fleet-overview.json",
                "hubwatch-fleet-overview",
                "hubwatch / Fleet overview"
            ),
            (
                "hub-detail.json",
                boards::HUB_DETAIL_UID,
                "hubwatch / Member and hub detail"
            ),
            (
                "slos.json",
                "hubwatch-slos",
                "hubwatch / SLOs and error budgets"
            ),
            (
                "usage.json",
                "hubwatch-usage",
                "hubwatch / Usage and cost recovery"
            ),
            (
                "hubwatch.json",
                "hubwatch-itself",
                "hubwatch / hubwatch itself"
            ),
        ]
    );
}

#[test]
fn every_dashboard_file_passes_the_lint() {
    let files = files();
    assert_eq!(
        files.len(),
        5,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (name, text) in &files {
        let problems = lint::lint(name, text);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
fn every_dashboard_links_to_the_others_and_data_links_resolve() {
    let uids: Vec<&str> = boards::all().iter().map(|b| b.uid).collect();
    for b in boards::all() {
        let d = b.to_json();
        assert_eq!(d["links"][0]["type"], "dashboards", "{}", b.title);
        assert_eq!(d["links"][0]["tags"], json!([crate::grafana::TAG]));
        assert_eq!(d["tags"], json!([crate::grafana::TAG]));
        // Data links name a dashboard that exists.
        for panel in lint::panels(&d) {
            for link in panel["fieldConfig"]["defaults"]["links"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let url = link["url"].as_str().unwrap_or_default();
                let uid = url
                    .strip_prefix("/d/")
                    .and_then(|rest| rest.split('?').next())
                    .unwrap_or_default();
                assert!(
                    uids.contains(&uid),
                    "{}: link to unknown dashboard {url}",
                    b.title
                );
            }
        }
    }
}

#[test]
fn panels_have_units_and_slo_panels_thresholds_from_the_target() {
    for b in boards::all() {
        let d = b.to_json();
        for panel in lint::panels(&d) {
            let unit = panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            assert!(!unit.is_empty(), "{} / {}", b.title, panel["title"]);
        }
    }
    // The margin panels colour by SLI - target: red below 0, green from 0.
    let slo = boards::all()
        .into_iter()
        .find(|b| b.uid == "hubwatch-slos")
        .map(|b| b.to_json())
        .expect("the SLO dashboard");
    let margin = lint::panels(&slo)
        .into_iter()
        .find(|p| p["title"] == "Margin over target")
        .expect("the margin panel");
    assert!(
        margin["targets"][0]["expr"]
            .as_str()
            .unwrap_or_default()
            .contains(hubwatch_shared::metrics::SLO_TARGET.name)
    );
    assert_eq!(
        margin["fieldConfig"]["defaults"]["thresholds"]["steps"],
        json!([{ "color": "red", "value": null }, { "color": "green", "value": 0.0 }])
    );
}

/// A generated dashboard as JSON, to break one rule at a time.
fn sample() -> Value {
    boards::all()[0].to_json()
}

fn lint_value(v: &Value) -> String {
    lint::lint("sample.json", &v.to_string()).join("\n")
}

#[test]
fn the_lint_passes_a_generated_dashboard() {
    assert_eq!(lint_value(&sample()), "");
}

#[test]
fn the_lint_rejects_invalid_json() {
    assert!(
        lint::lint("x.json", "{ \"uid\": ")
            .join("")
            .contains("not valid JSON")
    );
}

#[test]
fn the_lint_rejects_duplicate_panel_ids() {
    let mut d = sample();
    d["panels"][1]["id"] = d["panels"][0]["id"].clone();
    assert!(
        lint_value(&d).contains("duplicate panel id"),
        "{}",
        lint_value(&d)
    );
}

#[test]
fn the_lint_rejects_a_fixed_datasource() {
    let mut d = sample();
    d["panels"][0]["datasource"] = json!({ "type": "prometheus", "uid": "P1234" });
    assert!(lint_value(&d).contains("datasource is not the ${datasource} variable"));
    let mut d = sample();
    d["panels"][0]["targets"][0]["datasource"] = json!({ "uid": "P1234" });
    assert!(lint_value(&d).contains("query A: datasource is not"));
    let mut d = sample();
    d["templating"]["list"][0]["type"] = json!("custom");
    assert!(lint_value(&d).contains("no `datasource` variable"));
}

#[test]
fn the_lint_rejects_unknown_metric_names() {
    let mut d = sample();
    d["panels"][0]["targets"][0]["expr"] = json!("sum by (hub) (hubwatch_hub_upp{hub=~\"$hub\"})");
    assert!(
        lint_value(&d).contains("unknown metric \"hubwatch_hub_upp\""),
        "{}",
        lint_value(&d)
    );
    let mut d = sample();
    d["templating"]["list"][1]["query"]["query"] = json!("label_values(hubwatch_nope, member)");
    assert!(lint_value(&d).contains("unknown metric \"hubwatch_nope\""));
    // A gauge has no _bucket series.
    let mut d = sample();
    d["panels"][0]["targets"][0]["expr"] = json!("hubwatch_hub_up_bucket");
    assert!(lint_value(&d).contains("unknown metric"));
}

#[test]
fn the_lint_rejects_hard_coded_members_and_hubs() {
    let mut d = sample();
    d["panels"][0]["targets"][0]["expr"] = json!("hubwatch_hub_up{member=\"leap\"}");
    assert!(
        lint_value(&d).contains("hard-coded member"),
        "{}",
        lint_value(&d)
    );
    let mut d = sample();
    d["panels"][0]["targets"][0]["expr"] = json!("hubwatch_hub_up{hub=~\"prod|staging\"}");
    assert!(lint_value(&d).contains("hard-coded hub"));
    let mut d = sample();
    d["templating"]["list"][2]["current"] = json!({ "text": "prod", "value": "prod" });
    assert!(lint_value(&d).contains("variable `hub` has a saved value"));
    let mut d = sample();
    let table = d["panels"]
        .as_array()
        .and_then(|p| p.iter().position(|p| p["type"] == "table"))
        .expect("a table");
    d["panels"][table]["fieldConfig"]["defaults"]["links"] =
        json!([{ "title": "x", "url": "/d/hubwatch-hub-detail?var-member=leap" }]);
    assert!(lint_value(&d).contains("fixes member"));
    let mut d = sample();
    d["templating"]["list"] = json!([d["templating"]["list"][0]]);
    assert!(lint_value(&d).contains("no `member` variable"));
}

#[test]
fn the_lint_rejects_labels_the_series_do_not_have() {
    let mut d = sample();
    d["panels"][0]["targets"][0]["expr"] =
        json!("sum by (member, cluster) (hubwatch_hub_up{member=~\"$member\"})");
    assert!(
        lint_value(&d).contains("label \"cluster\" is on none"),
        "{}",
        lint_value(&d)
    );
    let mut d = sample();
    d["panels"][0]["targets"][0]["legendFormat"] = json!("{{member}} {{vantge}}");
    assert!(
        lint_value(&d).contains("label \"vantge\""),
        "{}",
        lint_value(&d)
    );
    // A histogram's buckets carry `le`.
    let mut d = sample();
    d["panels"][0]["targets"][0]["expr"] = json!(
        "histogram_quantile(0.9, sum by (le) (rate(hubwatch_collector_ingest_ack_seconds_bucket[5m])))"
    );
    d["panels"][0]["targets"][0]["legendFormat"] = json!("");
    assert_eq!(lint_value(&d), "");
}

#[test]
fn the_lint_rejects_panels_without_units_or_queries() {
    let mut d = sample();
    d["panels"][0]["fieldConfig"]["defaults"]["unit"] = json!("");
    assert!(lint_value(&d).contains("no unit"));
    let mut d = sample();
    d["panels"][0]["targets"] = json!([]);
    assert!(lint_value(&d).contains("no queries"));
}

#[test]
fn promql_names_skip_functions_labels_strings_and_variables() {
    let expr = r#"histogram_quantile(0.9, sum by (member, le) (rate(a_bucket{member=~"$member", x="y_z"}[$__rate_interval]))) / on (member) group_left (tier) b:c - ignoring(slo) c offset 5m or vector(0) and sum without (hub) (d) > bool 1e3"#;
    assert_eq!(
        promql::metric_names(expr),
        vec!["a_bucket", "b:c", "c", "d"]
    );
    assert_eq!(
        promql::metric_names("time() - x{member=~\"$member\"}"),
        vec!["x"]
    );
    let m = promql::matchers(r#"x{member=~"$member", hub != "a\"b", le="+Inf"}"#);
    let got: Vec<(&str, &str, &str)> = m
        .iter()
        .map(|m| (m.label.as_str(), m.op.as_str(), m.value.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("member", "=~", "$member"),
            ("hub", "!=", "a\\\"b"),
            ("le", "=", "+Inf")
        ]
    );
}

#[test]
fn queries_list_every_target_and_substitute_expands_variables() {
    let d = sample();
    let qs = queries(&d);
    let targets: usize = lint::panels(&d)
        .iter()
        .map(|p| p["targets"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(qs.len(), targets);
    assert!(
        qs.iter()
            .all(|q| q.panel_id > 0 && !q.panel.is_empty() && !q.ref_id.is_empty())
    );
    assert_eq!(
        substitute(
            "rate(x{member=~\"$member\",hub=~\"${hub}\"}[$__rate_interval]) + increase(y[$__range]) + z[$__interval]",
            "alpha",
            "lab|lab2",
            "1m",
            "2s",
            "45s"
        ),
        "rate(x{member=~\"alpha\",hub=~\"lab|lab2\"}[1m]) + increase(y[45s]) + z[2s]"
    );
}
