//! A small builder for the parts of Grafana 11's dashboard JSON model the
//! hubwatch dashboards use: the `${datasource}`, `member` and `hub`
//! variables, panels laid out left to right on the 24-column grid, targets,
//! units, thresholds and links. Everything it writes is deterministic, so the
//! checked-in files can be compared byte for byte with a fresh rendering.

use serde_json::{Value, json};

/// The datasource every panel and target uses: the dashboard's variable,
/// never a fixed uid, so the same JSON works in every Grafana.
pub fn datasource() -> Value {
    json!({ "type": "prometheus", "uid": "${datasource}" })
}

/// The tag every hubwatch dashboard carries; the dashboards link to each
/// other through it.
pub const TAG: &str = "hubwatch";

/// Label matchers for the `member` and `hub` variables.
pub const MEMBER_HUB: &str = r#"member=~"$member", hub=~"$hub""#;

/// Label matcher for the `member` variable alone (series without a hub).
pub const MEMBER: &str = r#"member=~"$member""#;

/// What kind of Grafana panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `timeseries`.
    TimeSeries,
    /// `stat`.
    Stat,
    /// `bargauge`.
    BarGauge,
    /// `table` (instant queries, one row per series).
    Table,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::TimeSeries => "timeseries",
            Self::Stat => "stat",
            Self::BarGauge => "bargauge",
            Self::Table => "table",
        }
    }
}

/// One query of a panel.
#[derive(Debug, Clone)]
pub struct Target {
    /// The PromQL expression (may use `$member`, `$hub`, `$__rate_interval`,
    /// `$__range`, `$__interval`).
    pub expr: String,
    /// `legendFormat`.
    pub legend: String,
}

/// A query with its legend.
pub fn q(expr: impl Into<String>, legend: &str) -> Target {
    Target {
        expr: expr.into(),
        legend: legend.to_string(),
    }
}

/// One panel.
#[derive(Debug, Clone)]
pub struct Panel {
    kind: Kind,
    title: String,
    description: String,
    unit: String,
    min: Option<f64>,
    max: Option<f64>,
    thresholds: Vec<(&'static str, Option<f64>)>,
    targets: Vec<Target>,
    width: u32,
    height: u32,
    links: Vec<Value>,
    overrides: Vec<Value>,
    show_thresholds: bool,
}

impl Panel {
    /// A panel of `kind` with its title, description and unit (Grafana unit
    /// ids: `percentunit`, `s`, `bytes`, `short`, `reqps`, ...).
    pub fn new(kind: Kind, title: &str, description: &str, unit: &str) -> Self {
        Self {
            kind,
            title: title.to_string(),
            description: description.to_string(),
            unit: unit.to_string(),
            min: None,
            max: None,
            thresholds: vec![("green", None)],
            targets: Vec::new(),
            width: 8,
            height: 8,
            links: Vec::new(),
            overrides: Vec::new(),
            show_thresholds: false,
        }
    }

    /// Adds a query.
    pub fn target(mut self, target: Target) -> Self {
        self.targets.push(target);
        self
    }

    /// Width in grid columns (of 24) and height in grid rows.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width.clamp(1, 24);
        self.height = height.max(1);
        self
    }

    /// Axis or gauge range.
    pub fn range(mut self, min: Option<f64>, max: Option<f64>) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// Threshold steps: the first colour applies from minus infinity, each
    /// next one from its value up. Time series draw them as dashed lines.
    pub fn thresholds(mut self, base: &'static str, steps: &[(&'static str, f64)]) -> Self {
        self.thresholds = std::iter::once((base, None))
            .chain(steps.iter().map(|&(c, v)| (c, Some(v))))
            .collect();
        self.show_thresholds = true;
        self
    }

    /// A data link on every value (e.g. to another dashboard, with the
    /// row's labels as variables).
    pub fn link(mut self, title: &str, url: &str) -> Self {
        self.links.push(json!({ "title": title, "url": url }));
        self
    }

    /// Draws the series of query `ref_id` as a dashed line (a target, not data).
    pub fn dashed(mut self, ref_id: &str) -> Self {
        self.overrides.push(json!({
            "matcher": { "id": "byFrameRefID", "options": ref_id },
            "properties": [
                { "id": "custom.lineStyle", "value": { "dash": [10, 10], "fill": "dash" } },
                { "id": "custom.fillOpacity", "value": 0 }
            ]
        }));
        self
    }

    fn to_json(&self, id: u32, x: u32, y: u32) -> Value {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .zip(ref_ids())
            .map(|(t, ref_id)| {
                let table = self.kind == Kind::Table;
                json!({
                    "datasource": datasource(),
                    "refId": ref_id,
                    "expr": t.expr,
                    "legendFormat": t.legend,
                    "range": !table,
                    "instant": table,
                    "format": if table { "table" } else { "time_series" },
                })
            })
            .collect();
        let steps: Vec<Value> = self
            .thresholds
            .iter()
            .map(|(color, value)| json!({ "color": color, "value": value }))
            .collect();
        let mut defaults = json!({
            "unit": self.unit,
            "thresholds": { "mode": "absolute", "steps": steps },
            "links": self.links,
            "mappings": [],
        });
        if let Some(min) = self.min {
            defaults["min"] = json!(min);
        }
        if let Some(max) = self.max {
            defaults["max"] = json!(max);
        }
        let options = match self.kind {
            Kind::TimeSeries => {
                defaults["custom"] = json!({
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "spanNulls": false,
                    "thresholdsStyle": {
                        "mode": if self.show_thresholds { "dashed" } else { "off" }
                    },
                });
                json!({
                    "legend": { "displayMode": "table", "placement": "bottom", "showLegend": true,
                                "calcs": ["lastNotNull"] },
                    "tooltip": { "mode": "multi", "sort": "desc" },
                })
            }
            Kind::Stat => json!({
                "reduceOptions": { "calcs": ["lastNotNull"], "fields": "", "values": false },
                "colorMode": "background",
                "graphMode": "area",
                "textMode": "auto",
            }),
            Kind::BarGauge => json!({
                "reduceOptions": { "calcs": ["lastNotNull"], "fields": "", "values": false },
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": true,
            }),
            Kind::Table => json!({ "showHeader": true, "cellHeight": "sm" }),
        };
        let mut panel = json!({
            "id": id,
            "type": self.kind.as_str(),
            "title": self.title,
            "description": self.description,
            "datasource": datasource(),
            "gridPos": { "h": self.height, "w": self.width, "x": x, "y": y },
            "targets": targets,
            "fieldConfig": { "defaults": defaults, "overrides": self.overrides },
            "options": options,
        });
        if self.kind == Kind::Table {
            // One row per series, labels as columns, the value last.
            panel["transformations"] = json!([
                { "id": "labelsToFields", "options": {} },
                { "id": "merge", "options": {} },
                { "id": "organize", "options": { "excludeByName": { "Time": true } } }
            ]);
        }
        panel
    }
}

fn ref_ids() -> impl Iterator<Item = String> {
    (b'A'..=b'Z').map(|c| char::from(c).to_string())
}

/// One dashboard.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// File name under `dashboards/`, e.g. `fleet-overview.json`.
    pub file: &'static str,
    /// Stable uid (links and bookmarks use it).
    pub uid: &'static str,
    /// Stable title.
    pub title: &'static str,
    /// What the dashboard is for.
    pub description: &'static str,
    /// Default time range, e.g. `now-6h`.
    pub from: &'static str,
    /// The panels, laid out in order.
    pub panels: Vec<Panel>,
}

/// The `member` and `hub` variables take their values from this series: every
/// hub with a tier has its targets exported, whatever else it reports.
pub fn variable_source() -> &'static str {
    hubwatch_shared::metrics::SLO_TARGET.name
}

impl Dashboard {
    /// The Grafana 11 JSON model.
    pub fn to_json(&self) -> Value {
        let mut panels = Vec::with_capacity(self.panels.len());
        let (mut x, mut y, mut row_height) = (0u32, 0u32, 0u32);
        for (i, panel) in self.panels.iter().enumerate() {
            if x + panel.width > 24 {
                x = 0;
                y += row_height;
                row_height = 0;
            }
            let id = u32::try_from(i).unwrap_or(u32::MAX - 1) + 1;
            panels.push(panel.to_json(id, x, y));
            x += panel.width;
            row_height = row_height.max(panel.height);
        }
        let source = variable_source();
        json!({
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": [TAG],
            "editable": true,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "timezone": "utc",
            "refresh": "1m",
            "time": { "from": self.from, "to": "now" },
            "links": [{
                "title": "hubwatch dashboards",
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": true,
                "includeVars": true,
                "keepTime": true,
            }],
            "annotations": { "list": [] },
            "templating": { "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                query_variable("member", "Member", &format!("label_values({source}, member)")),
                query_variable(
                    "hub",
                    "Hub",
                    &format!("label_values({source}{{{MEMBER}}}, hub)"),
                ),
            ]},
            "panels": panels,
        })
    }

    /// The file's text: pretty JSON and a final newline.
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        text.push('\n');
        text
    }
}

fn query_variable(name: &str, label: &str, query: &str) -> Value {
    json!({
        "name": name,
        "label": label,
        "type": "query",
        "datasource": datasource(),
        "definition": query,
        "query": { "query": query, "refId": format!("{name}-values"), "qryType": 1 },
        "refresh": 2,
        "includeAll": true,
        "multi": true,
        "allValue": ".*",
        "current": {},
        "options": [],
        "sort": 1,
        "hide": 0,
        "regex": "",
    })
}
