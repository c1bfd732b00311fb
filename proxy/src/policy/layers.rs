//! An endpoint's (or egress entry's) effective policy: its own statements
//! and the overlays that narrow them. A request is allowed only when every
//! layer allows it, so the effective set is the intersection of the layers;
//! an overlay whose allow statements reach beyond the base is refused at
//! load, naming the statement, rather than silently intersected away.

use http::Method;

use super::{Decision, Policy, Statement};
use crate::parse::Host;

/// The layers of one endpoint's policy: the base first, then each overlay.
#[derive(Debug, Clone, Default)]
pub struct Effective {
    layers: Vec<Layer>,
}

#[derive(Debug, Clone)]
struct Layer {
    /// Where the statements came from: empty for the base config, else the
    /// overlay file.
    origin: String,
    policy: Policy,
}

/// How a request fared: the decision of the layer that decided it (the
/// first that did not allow, or the last one), and that layer's origin
/// (`None` for the base config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'p> {
    /// The deciding layer's decision.
    pub decision: Decision,
    /// The overlay file that decided, or `None` for the base config.
    pub overlay: Option<&'p str>,
}

impl Verdict<'_> {
    /// Whether the request may go on.
    pub fn allowed(&self) -> bool {
        self.decision.allowed()
    }

    /// The refusal, as the 403 body and the audit say it: `no statement
    /// allows GET /x` or `statement 2 denies GET /x`, with the overlay named
    /// when one decided. `None` when allowed.
    pub fn refusal(&self, method: &Method, path: &str) -> Option<String> {
        let why = match self.decision {
            Decision::Allow(_) => return None,
            Decision::Deny(i) => format!("statement {i} denies"),
            Decision::NoMatch => "no statement allows".to_owned(),
        };
        Some(match self.overlay {
            Some(o) => format!("{why} {method} {path} (overlay {o})"),
            None => format!("{why} {method} {path}"),
        })
    }
}

impl Effective {
    /// The base layer.
    pub fn new(base: Policy) -> Self {
        let mut layers = Vec::new();
        if !base.is_empty() {
            layers.push(Layer {
                origin: String::new(),
                policy: base,
            });
        }
        Self { layers }
    }

    /// No statements anywhere: everything the rule matches is allowed.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Adds an overlay's statements from file `origin`. Errors name the
    /// statement (`[j]` or `[j].field`) and why.
    pub fn narrow(
        &mut self,
        origin: &str,
        statements: &[Statement],
    ) -> Result<(), (String, String)> {
        let policy = Policy::compile(statements)?;
        if policy.is_empty() {
            return Err((
                String::new(),
                "an overlay entry needs at least one statement (none would allow everything the base does, which is what leaving it out says)".into(),
            ));
        }
        if let Some(base) = self.layers.first().filter(|l| l.origin.is_empty())
            && let Some((j, why)) = base.policy.escapes(&policy)
        {
            return Err((format!("[{j}]"), why));
        }
        self.layers.push(Layer {
            origin: origin.to_owned(),
            policy,
        });
        Ok(())
    }

    /// Decides a request: every layer must allow it. Allocates nothing.
    pub fn decide(&self, method: &Method, host: &Host, path: &str) -> Verdict<'_> {
        let mut last = Verdict {
            decision: Decision::NoMatch,
            overlay: None,
        };
        for l in &self.layers {
            last = Verdict {
                decision: l.policy.decide(method, host, path),
                overlay: (!l.origin.is_empty()).then_some(l.origin.as_str()),
            };
            if !last.allowed() {
                return last;
            }
        }
        last
    }

    /// Each layer's verdict on a request, for `lanyard policy test`:
    /// (overlay file or `None` for the base, decision, the deciding
    /// statement's text).
    pub fn explain(
        &self,
        method: &Method,
        host: &Host,
        path: &str,
    ) -> Vec<(Option<&str>, Decision, Option<&str>)> {
        self.layers
            .iter()
            .map(|l| {
                let d = l.policy.decide(method, host, path);
                let text = match d {
                    Decision::Allow(i) | Decision::Deny(i) => l.policy.describe().nth(i),
                    Decision::NoMatch => None,
                };
                ((!l.origin.is_empty()).then_some(l.origin.as_str()), d, text)
            })
            .collect()
    }

    /// Every statement, layer by layer, as `lanyard check` prints them:
    /// (overlay file or `None`, index, text).
    pub fn describe(&self) -> Vec<(Option<&str>, usize, &str)> {
        self.layers
            .iter()
            .flat_map(|l| {
                let origin = (!l.origin.is_empty()).then_some(l.origin.as_str());
                l.policy
                    .describe()
                    .enumerate()
                    .map(move |(i, t)| (origin, i, t))
            })
            .collect()
    }
}
