//! The control plane's side of traffic: loading and storing the live alias's split, starting
//! a canary, and the task that drives it to 100 % or rolls it back (the policy is in
//! [`crate::traffic`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_core::{AuditAction, AuditEntry, NewDeployment, RegistryError};

use crate::plane::{describe, ControlPlane, DeployError, Deployed};
use crate::snapshot::{DeploymentView, LIVE};
use crate::split::CanaryRun;
use crate::traffic::{CanaryOutcome, CanarySpec, CanaryState, Health, TrafficStatus, CANARY_META, LAST_CANARY_META};

/// How often a running canary is judged and moved.
const TICK: Duration = Duration::from_millis(500);

impl ControlPlane {
    /// What the live alias's traffic is now.
    pub(crate) fn traffic_status(&self) -> TrafficStatus {
        let snap = self.snapshot.load();
        let weights = if snap.traffic.is_empty() {
            snap.live.iter().map(|l| (l.version, 100)).collect()
        } else {
            snap.traffic.iter().map(|(v, p)| (v.version, *p)).collect()
        };
        let canary = self.canary.load().as_ref().map(|r| r.state.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let last_canary = self.last_canary.lock().unwrap_or_else(|e| e.into_inner()).clone();
        TrafficStatus { weights, canary, last_canary }
    }

    /// Store a checked split and serve it. Call under the deploy lock.
    pub(crate) async fn apply_split(&self, split: &[(u64, u32)]) -> Result<(), RegistryError> {
        let snap = self.snapshot.load_full();
        let Some(primary) = crate::traffic::primary(split).and_then(|v| snap.versions.get(&v).cloned()) else {
            return Ok(());
        };
        let stored: Vec<(u64, u32)> = if split.len() == 1 { Vec::new() } else { split.to_vec() };
        self.registry.set_traffic(LIVE, primary.version, &stored).await?;
        let traffic = stored.iter().filter_map(|(v, p)| snap.versions.get(v).map(|view| (view.clone(), *p))).collect();
        self.activate_split(primary, None, traffic);
        Ok(())
    }

    /// Record a canary's new version (the live alias unchanged), give it its first share and
    /// start the task that drives it. Call under the deploy lock.
    pub(crate) async fn record_canary(
        &self,
        new: NewDeployment<'_>,
        live: Arc<DeploymentView>,
        spec: CanarySpec,
        make_view: impl FnOnce(u64, u64) -> DeploymentView,
    ) -> Result<Deployed, DeployError> {
        // Stored under its own alias: the live one moves only with the split below.
        let record = self.registry.add_deployment(new, "latest").await?;
        let view = Arc::new(make_view(record.version, record.created_ms));
        self.end_canary("a new canary replaced it").await;
        let state = CanaryState {
            old: live.version,
            new: view.version,
            started_ms: nimbus_core::ids::now_ms(),
            spec: spec.clone(),
            percent: spec.percent,
        };
        let text = serde_json::to_string(&state).map_err(DeployError::Encode)?;
        // The canary is stored before its traffic: a crash in between restarts into a rollback.
        self.registry.set_meta(CANARY_META, &text).await?;
        let split = [(live.version, 100 - spec.percent), (view.version, spec.percent)];
        self.registry.set_traffic(LIVE, live.version, &split).await?;
        self.activate_split(live.clone(), Some(view.clone()), vec![(live, split[0].1), (view.clone(), spec.percent)]);
        let run = Arc::new(CanaryRun {
            new: view.version,
            state: std::sync::Mutex::new(state),
            health: Health::default(),
            started: Instant::now(),
        });
        self.canary.store(Some(run.clone()));
        self.write_audit(format!("version {} at {}%", view.version, spec.percent), None).await;
        tokio::spawn(drive(self.me.clone(), run));
        Ok(describe(&view, true))
    }

    /// Stop a running canary (a deploy, rollback or split replaced it), noting why.
    pub(crate) async fn end_canary(&self, why: &str) {
        if let Some(run) = self.canary.load_full() {
            let state = run.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            self.finish(&state, false, format!("stopped: {why}")).await;
            self.canary.store(None);
        }
    }

    /// Clear the stored canary and keep its outcome (in memory first: a reader that sees the
    /// canary gone, which the caller does after this, sees how it ended).
    async fn finish(&self, state: &CanaryState, promoted: bool, reason: String) {
        let outcome =
            CanaryOutcome { old: state.old, new: state.new, promoted, reason, at_ms: nimbus_core::ids::now_ms() };
        *self.last_canary.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome.clone());
        let stored = async {
            self.registry.set_meta(CANARY_META, "").await?;
            let text = serde_json::to_string(&outcome).unwrap_or_default();
            self.registry.set_meta(LAST_CANARY_META, &text).await
        };
        if let Err(e) = stored.await {
            tracing::error!("cannot store how the canary ended: {e}");
        }
        let verb = if promoted { "promoted" } else { "rolled back" };
        let error = (!promoted).then(|| outcome.reason.clone());
        self.write_audit(format!("version {} {verb} (old version {})", state.new, state.old), error).await;
    }

    /// At start: a canary a restart interrupted rolls back to its old version (its health
    /// window was in memory; see [`crate::traffic`]). Also reads how the last canary ended.
    pub(crate) async fn settle_interrupted(&self, interrupted: Option<CanaryState>) -> Result<(), DeployError> {
        if let Some(text) = self.registry.meta(LAST_CANARY_META).await?.filter(|t| !t.is_empty()) {
            *self.last_canary.lock().unwrap_or_else(|e| e.into_inner()) = serde_json::from_str(&text).ok();
        }
        let Some(state) = interrupted else { return Ok(()) };
        let _guard = self.lock.lock().await;
        if self.snapshot.load().versions.contains_key(&state.old) {
            self.apply_split(&[(state.old, 100)]).await?;
        }
        let reason = "nimbus restarted during the canary; its health was not seen, so it rolled back";
        self.finish(&state, false, reason.to_owned()).await;
        tracing::warn!(old = state.old, new = state.new, "{reason}");
        Ok(())
    }

    /// Where canary decisions go: the audit log. Entries made before it was set are written now.
    pub async fn set_audit_log(&self, audit: Arc<dyn nimbus_core::AuditLog>) {
        let _ = self.audit.set(audit.clone());
        let pending = std::mem::take(&mut *self.pending_audit.lock().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            if let Err(e) = audit.append(&pending).await {
                tracing::error!("{e}");
            }
        }
    }

    async fn write_audit(&self, target: String, error: Option<String>) {
        let entry = AuditEntry::local(AuditAction::Canary, target, error);
        match self.audit.get() {
            Some(audit) => {
                if let Err(e) = audit.append(&[entry]).await {
                    tracing::error!("{e}");
                }
            }
            None => self.pending_audit.lock().unwrap_or_else(|e| e.into_inner()).push(entry),
        }
    }

    /// One tick of a canary: judge, then move, promote or roll back. False once it is over.
    async fn step(&self, run: &Arc<CanaryRun>) -> bool {
        let _guard = self.lock.lock().await;
        let current = self.canary.load();
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, run)) {
            return false;
        }
        let state = run.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let health = run.health.summary(state.spec.judge_window());
        let (split, outcome) = match (state.spec.judge(&health), state.spec.share_at(run.started.elapsed())) {
            (Some(why), _) => (vec![(state.old, 100)], Some((false, why))),
            (None, None) => (vec![(state.new, 100)], Some((true, promoted_because(health.requests)))),
            (None, Some(p)) if p == state.percent => return true,
            (None, Some(p)) => (vec![(state.old, 100 - p), (state.new, p)], None),
        };
        if let Err(e) = self.apply_split(&split).await {
            tracing::error!("the canary cannot move its traffic: {e}");
            return true;
        }
        let Some((promoted, why)) = outcome else {
            let percent = split.last().map_or(0, |(_, p)| *p);
            run.state.lock().unwrap_or_else(|e| e.into_inner()).percent = percent;
            let text = serde_json::to_string(&CanaryState { percent, ..state.clone() }).unwrap_or_default();
            if let Err(e) = self.registry.set_meta(CANARY_META, &text).await {
                tracing::error!("cannot store the canary: {e}");
            }
            self.write_audit(format!("version {} at {percent}%", state.new), None).await;
            return true;
        };
        self.finish(&state, promoted, why).await;
        self.canary.store(None);
        false
    }
}

/// Why a canary that reached the end of its window was promoted (saying so when too few
/// requests came to judge it: the window, not the evidence, decided).
fn promoted_because(requests: usize) -> String {
    if requests < crate::traffic::MIN_REQUESTS {
        format!(
            "its window ended with only {requests} requests in the last judged window (fewer than {} are not judged)",
            crate::traffic::MIN_REQUESTS
        )
    } else {
        format!("healthy through its window ({requests} requests in the last judged window)")
    }
}

/// The task a canary runs in: a tick until it is promoted, rolled back or replaced.
async fn drive(plane: std::sync::Weak<ControlPlane>, run: Arc<CanaryRun>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let Some(plane) = plane.upgrade() else { return };
        if !plane.step(&run).await {
            return;
        }
    }
}
