//! The cost feature of `serve`: the `cost.close` task, which closes each
//! month once its end plus `[cost] close_grace` has passed
//! ([`super::close::close_due`]), on either backend ([`cost_store`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::close::close_due;
use super::model::CostModel;
use super::store::{CostStore, cost_store};
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Shutdown, Task};
use crate::usage::UsageStore;

/// How often `serve` checks for a month to close. Closing is idempotent, so
/// the check only decides how soon after the grace a month closes.
pub const CLOSE_TICK: Duration = Duration::from_secs(600);

/// The cost feature of `serve`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CostComponent;

impl Component for CostComponent {
    fn name(&self) -> &'static str {
        "cost"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let model =
                CostModel::from_config(&ctx.config).map_err(|e| ComponentError::Config {
                    component: "cost",
                    source: Box::new(e),
                })?;
            let grace_ms =
                i64::try_from(ctx.config.cost.close_grace.as_millis()).unwrap_or(i64::MAX);
            let cost: Arc<dyn CostStore> = cost_store(&ctx.store);
            let usage: Arc<dyn UsageStore> = crate::usage::usage_store(&ctx.store);
            Ok(Built {
                tasks: vec![Task::new(
                    "cost.close",
                    run_close(
                        cost,
                        usage,
                        Arc::new(model),
                        grace_ms,
                        ctx.clock,
                        ctx.shutdown,
                    ),
                )],
                ..Built::default()
            })
        })
    }
}

/// Every [`CLOSE_TICK`] until `shutdown`: [`close_due`] on a blocking thread.
async fn run_close(
    cost: Arc<dyn CostStore>,
    usage: Arc<dyn UsageStore>,
    model: Arc<CostModel>,
    grace_ms: i64,
    clock: SharedClock,
    shutdown: Shutdown,
) {
    let mut ticks = shutdown.every(CLOSE_TICK);
    while ticks.next().await {
        let (cost, usage, model, clock) = (
            Arc::clone(&cost),
            Arc::clone(&usage),
            Arc::clone(&model),
            Arc::clone(&clock),
        );
        let round = tokio::task::spawn_blocking(move || {
            close_due(&*cost, &*usage, &model, grace_ms, clock.now_ms())
        })
        .await;
        match round {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "closing cost periods failed; retrying"),
            Err(e) => tracing::error!(error = %e, "closing cost periods failed; retrying"),
        }
    }
}
