//! Statement policy: which actions on which resources an agent may perform
//! at an endpoint, decided before any token is fetched (issue 15).
//!
//! A statement is `{ effect: allow | deny, actions: [...], resources: [...] }`.
//! Actions are HTTP methods or `*`. A resource is a pattern over the
//! normalised path (query excluded): `*` matches within one segment (any
//! characters but `/`, so `v*` matches `v1`), a segment that is exactly `**`
//! matches zero or more segments, anything else is literal and
//! case-sensitive. A resource may start with a host (`api.example.com/...`,
//! canonicalised as the matcher does hosts, so compared without case) for
//! wildcard endpoints.
//!
//! Any matching `deny` wins; otherwise any matching `allow` allows; otherwise
//! the request is denied (an endpoint with statements is deny by default).
//! Patterns are compiled once; [`Policy::decide`] allocates nothing: the
//! path's segments are split into a fixed array on the stack, and a path of
//! more than [`MAX_SEGMENTS`] segments is denied.

use http::Method;

use crate::parse::Host;

mod layers;
pub use layers::{Effective, Verdict};

/// Segments a path may have for a statement to allow it.
pub const MAX_SEGMENTS: usize = 64;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// The statement allows what it matches.
    #[default]
    Allow,
    /// The statement denies what it matches, whatever else allows it.
    Deny,
}

/// One statement, as configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// `allow` (default) or `deny`.
    #[serde(default)]
    pub effect: Effect,
    /// HTTP methods (any case), or `*` for every method.
    pub actions: Vec<String>,
    /// Path patterns, optionally preceded by a host.
    pub resources: Vec<String>,
}

/// What decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the statement at this index.
    Allow(usize),
    /// Denied by the `deny` statement at this index.
    Deny(usize),
    /// No statement allowed it.
    NoMatch,
}

impl Decision {
    /// Whether the request may go on.
    pub fn allowed(self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// A policy's statements, compiled.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    statements: Vec<Compiled>,
}

#[derive(Debug, Clone)]
struct Compiled {
    index: usize,
    effect: Effect,
    /// `None`: every method.
    methods: Option<Vec<Method>>,
    resources: Vec<Resource>,
    /// As `lanyard check` prints it: `allow GET,POST /a/*, /b/**`.
    text: String,
}

#[derive(Debug, Clone)]
struct Resource {
    host: Option<Host>,
    segments: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: zero or more whole segments.
    Any,
    /// A segment glob; `*` matches any run of characters but `/`.
    Glob(String),
}

impl Policy {
    /// Compiles `statements`; an error names the statement (`[i]`), the
    /// field and the reason.
    pub fn compile(statements: &[Statement]) -> Result<Self, (String, String)> {
        let mut out = Vec::with_capacity(statements.len());
        for (i, s) in statements.iter().enumerate() {
            let f = |field: &str| format!("[{i}].{field}");
            if s.actions.is_empty() {
                return Err((f("actions"), "must name at least one method, or *".into()));
            }
            if s.resources.is_empty() {
                return Err((f("resources"), "must name at least one resource".into()));
            }
            let methods = if s.actions.iter().any(|a| a == "*") {
                None
            } else {
                let mut m = Vec::new();
                for (j, a) in s.actions.iter().enumerate() {
                    let up = a.to_ascii_uppercase();
                    let method = Method::from_bytes(up.as_bytes()).map_err(|_| {
                        (
                            f(&format!("actions[{j}]")),
                            format!("'{a}' is not an HTTP method"),
                        )
                    })?;
                    m.push(method);
                }
                Some(m)
            };
            let mut resources = Vec::new();
            for (j, r) in s.resources.iter().enumerate() {
                resources
                    .push(Resource::parse(r).map_err(|why| (f(&format!("resources[{j}]")), why))?);
            }
            let text = format!(
                "{} {} {}",
                match s.effect {
                    Effect::Allow => "allow",
                    Effect::Deny => "deny",
                },
                methods.as_ref().map_or_else(
                    || "*".to_owned(),
                    |m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(",")
                ),
                s.resources.join(", ")
            );
            out.push(Compiled {
                index: i,
                effect: s.effect,
                methods,
                resources,
                text,
            });
        }
        Ok(Self { statements: out })
    }

    /// Whether the policy has any statement (none: everything is allowed,
    /// as before statements existed).
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Each statement as `lanyard check` prints it, in order.
    pub fn describe(&self) -> impl Iterator<Item = &str> {
        self.statements.iter().map(|s| s.text.as_str())
    }

    /// Why an `allow` statement of `narrower` is not within this policy,
    /// naming it (`[j]`) and the first method and resource that escape;
    /// `None` when every allow statement of `narrower` only allows what
    /// one of this policy's allow statements does. An empty policy allows
    /// everything, so nothing escapes it. Deny statements only narrow, and
    /// this policy's own denies keep holding (layers are intersected), so
    /// neither needs checking. Conservative: a resource covered only by the
    /// union of several statements here counts as escaping.
    pub fn escapes(&self, narrower: &Policy) -> Option<(usize, String)> {
        if self.is_empty() {
            return None;
        }
        let allows: Vec<&Compiled> = self
            .statements
            .iter()
            .filter(|s| s.effect == Effect::Allow)
            .collect();
        for n in narrower
            .statements
            .iter()
            .filter(|s| s.effect == Effect::Allow)
        {
            let methods: Vec<Option<&Method>> = match &n.methods {
                None => vec![None],
                Some(m) => m.iter().map(Some).collect(),
            };
            for m in methods {
                for r in &n.resources {
                    let covered = allows.iter().any(|a| {
                        let method_ok = match (&a.methods, m) {
                            (None, _) => true,
                            (Some(_), None) => false,
                            (Some(am), Some(m)) => am.contains(m),
                        };
                        method_ok && a.resources.iter().any(|q| q.contains(r))
                    });
                    if !covered {
                        return Some((
                            n.index,
                            format!(
                                "allows {} {r} and no statement of the base allows all of it; an overlay can only narrow",
                                m.map_or("*", Method::as_str),
                            ),
                        ));
                    }
                }
            }
        }
        None
    }

    /// Decides `method` on `host` + `path` (the normalised path, no query).
    pub fn decide(&self, method: &Method, host: &Host, path: &str) -> Decision {
        let mut buf = [""; MAX_SEGMENTS];
        let Some(n) = split(path, &mut buf) else {
            return Decision::NoMatch;
        };
        let segs = &buf[..n];
        let mut allow = None;
        for s in &self.statements {
            if !s.methods.as_ref().is_none_or(|m| m.contains(method)) {
                continue;
            }
            if !s.resources.iter().any(|r| r.matches(host, segs)) {
                continue;
            }
            match s.effect {
                Effect::Deny => return Decision::Deny(s.index),
                Effect::Allow => {
                    allow.get_or_insert(s.index);
                }
            }
        }
        allow.map_or(Decision::NoMatch, Decision::Allow)
    }
}

/// Splits an absolute path into its non-empty segments; `None` past the cap.
fn split<'a>(path: &'a str, buf: &mut [&'a str; MAX_SEGMENTS]) -> Option<usize> {
    let mut n = 0;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        *buf.get_mut(n)? = seg;
        n += 1;
    }
    Some(n)
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(h) = &self.host {
            write!(f, "{h}")?;
        }
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            match s {
                Seg::Any => f.write_str("/**")?,
                Seg::Glob(g) => write!(f, "/{g}")?,
            }
        }
        Ok(())
    }
}

impl Resource {
    /// Whether every request `other` matches, this matches too.
    fn contains(&self, other: &Resource) -> bool {
        let host_ok = match (&self.host, &other.host) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        host_ok && contains_segments(&self.segments, &other.segments)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let (host, path) = match text.find('/') {
            Some(0) => (None, text),
            Some(i) => (
                Some(Host::parse(&text[..i]).map_err(|e| format!("'{text}': {e}"))?),
                &text[i..],
            ),
            None => {
                return Err(format!(
                    "'{text}' must be a path starting with / (or host/path)"
                ));
            }
        };
        if path.contains('?') || path.contains('#') {
            return Err(format!(
                "'{text}': resources match the path only; remove the query"
            ));
        }
        let mut segments = Vec::new();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            if seg == "." || seg == ".." {
                return Err(format!(
                    "'{text}': dot segments never reach a statement (paths are normalised first)"
                ));
            }
            if seg == "**" {
                // `**/**` means the same as `**`.
                if segments.last() != Some(&Seg::Any) {
                    segments.push(Seg::Any);
                }
            } else if seg.contains("**") {
                return Err(format!("'{text}': ** must be a whole segment"));
            } else {
                segments.push(Seg::Glob(seg.to_owned()));
            }
        }
        Ok(Self { host, segments })
    }

    fn matches(&self, host: &Host, segs: &[&str]) -> bool {
        if let Some(h) = &self.host
            && h != host
        {
            return false;
        }
        match_segments(&self.segments, segs)
    }
}

/// Segment-wise match; no allocation. The two-pointer wildcard algorithm
/// (as [`glob`] does for bytes): every segment glob takes exactly one path
/// segment, so on a mismatch only the last `**` needs to take one more, and
/// the work is bounded by pattern × path length whatever the pattern: a
/// resource full of `**` cannot make a long path expensive to refuse.
fn match_segments(pat: &[Seg], segs: &[&str]) -> bool {
    let (mut p, mut s) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while s < segs.len() {
        match pat.get(p) {
            Some(Seg::Any) => {
                star = Some(p);
                mark = s;
                p += 1;
            }
            Some(Seg::Glob(g)) if glob(g.as_bytes(), segs[s].as_bytes()) => {
                p += 1;
                s += 1;
            }
            _ => match star {
                Some(st) => {
                    p = st + 1;
                    mark += 1;
                    s = mark;
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|x| *x == Seg::Any)
}

/// Whether pattern `q` matches every path pattern `r` matches. `**` in `q`
/// may take any of `r`'s segments, `**` included; a glob in `q` takes one
/// glob of `r` that it contains; `**` in `r` (any number of segments) is
/// within nothing but `**`. Decided over a table of suffix pairs (load time
/// only), so it is polynomial whatever the patterns.
fn contains_segments(q: &[Seg], r: &[Seg]) -> bool {
    table(q.len(), r.len(), |i, j, at| match &q[i] {
        Seg::Any => at(i + 1, j) || (j < r.len() && at(i, j + 1)),
        Seg::Glob(g) => match r.get(j) {
            Some(Seg::Glob(h)) => glob_contains(g.as_bytes(), h.as_bytes()) && at(i + 1, j + 1),
            _ => false,
        },
    })
}

/// Whether glob `g` matches every string glob `h` matches: `h` is matched
/// as text in which each of its `*` can only be taken by a `*` of `g` (a
/// literal of `g` cannot stand for an arbitrary run).
fn glob_contains(g: &[u8], h: &[u8]) -> bool {
    table(g.len(), h.len(), |a, b, at| {
        if g[a] == b'*' {
            at(a + 1, b) || (b < h.len() && at(a, b + 1))
        } else {
            b < h.len() && h[b] == g[a] && h[b] != b'*' && at(a + 1, b + 1)
        }
    })
}

/// Fills `dp[i][j]` for `i` in `0..=n`, `j` in `0..=m` from the end: row
/// `n` holds only `j == m`; `step(i, j, at)` computes an inner cell from
/// cells further on (`at(i', j')` with `i' > i`, or `i' == i` and
/// `j' > j`). Returns `dp[0][0]`.
fn table(
    n: usize,
    m: usize,
    step: impl Fn(usize, usize, &dyn Fn(usize, usize) -> bool) -> bool,
) -> bool {
    let w = m + 1;
    let mut dp = vec![false; (n + 1) * w];
    dp[n * w + m] = true;
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            let v = {
                let at = |a: usize, b: usize| dp[a * w + b];
                step(i, j, &at)
            };
            dp[i * w + j] = v;
        }
    }
    dp[0]
}

/// `*` matches any run of bytes (segments hold no `/`); everything else literally.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests;
