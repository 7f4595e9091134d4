//! The monthly report's building blocks (issue 8), other than cost: the
//! incident history ([`incidents`]), SLO attainment over a month
//! ([`slo`]), self-contained SVG charts ([`svg`]) and the guidance findings
//! ([`guidance`]). The renderers (`md`, `html`) and the `report` command are
//! built on top of these; everything here but the incident store is pure.

pub mod guidance;
pub mod incidents;
pub mod slo;
pub mod svg;
