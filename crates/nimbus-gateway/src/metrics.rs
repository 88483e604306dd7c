//! Counters for `/metrics` (Prometheus text exposition). Deliberately small for now: the
//! observability issue extends it with histograms and per-phase cold-start figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use nimbus_core::InvocationStatus;
use nimbus_scheduler::PoolStatus;

#[derive(Default)]
pub struct Metrics {
    invocations: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl Metrics {
    pub fn invocation(&self, function: &str, status: InvocationStatus, trigger: &'static str) {
        let mut m = self.invocations.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((function.to_owned(), status.as_str(), trigger)).or_default() += 1;
    }

    pub fn request(&self, kind: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((kind, status)).or_default() += 1;
    }

    pub fn render(&self, pools: &[PoolStatus]) -> String {
        let mut out = String::new();
        out.push_str("# HELP nimbus_invocations_total Invocations by function, status and trigger.\n# TYPE nimbus_invocations_total counter\n");
        for ((f, s, t), n) in self.invocations.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "nimbus_invocations_total{{function=\"{}\",status=\"{s}\",trigger=\"{t}\"}} {n}",
                escape(f)
            );
        }
        out.push_str("# HELP nimbus_gateway_requests_total HTTP requests by kind and status code.\n# TYPE nimbus_gateway_requests_total counter\n");
        for ((k, s), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "nimbus_gateway_requests_total{{kind=\"{k}\",code=\"{s}\"}} {n}");
        }
        out.push_str("# HELP nimbus_cold_starts_total Instances started, by function version.\n# TYPE nimbus_cold_starts_total counter\n");
        for p in pools {
            let _ = writeln!(
                out,
                "nimbus_cold_starts_total{{function=\"{}\",version=\"{}\"}} {}",
                escape(&p.function),
                p.version,
                p.cold_starts
            );
        }
        out.push_str(
            "# HELP nimbus_instances Instances by function version and state.\n# TYPE nimbus_instances gauge\n",
        );
        for p in pools {
            for (state, n) in [("idle", p.idle), ("busy", p.busy), ("starting", p.starting)] {
                let _ = writeln!(
                    out,
                    "nimbus_instances{{function=\"{}\",version=\"{}\",state=\"{state}\"}} {n}",
                    escape(&p.function),
                    p.version
                );
            }
        }
        out.push_str(
            "# HELP nimbus_queued_requests Requests waiting for an instance.\n# TYPE nimbus_queued_requests gauge\n",
        );
        for p in pools {
            let _ = writeln!(
                out,
                "nimbus_queued_requests{{function=\"{}\",version=\"{}\"}} {}",
                escape(&p.function),
                p.version,
                p.waiting
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
