//! `agent.*` validated into what the launcher will do. `lanyard check` and
//! `lanyard run` both build this, so a config `check` accepts is one `run`
//! can start, and every refusal names the field. Nothing here changes the
//! host; what must be created at start is listed in [`Plan::create`].

use std::path::{Path, PathBuf};

use crate::config::{ConfigFileError, Filesystem, Isolation, Validated};
use crate::paths::{self, Resolved};

use super::uid;

/// Who the agent runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// A uid leased for this sandbox alone from `first..=last`.
    Leased(u32, u32),
    /// `agent.user` / `agent.group`.
    Fixed(u32, u32),
}

/// The launcher's plan, with paths resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The agent's uid and gid.
    pub ids: Ids,
    /// Directories covered by an empty tmpfs.
    pub hide_dirs: Vec<PathBuf>,
    /// Files covered by an empty file.
    pub hide_files: Vec<PathBuf>,
    /// Hidden directories that do not exist yet: created (empty) at start,
    /// so that whatever appears in them later is covered too.
    pub create: Vec<PathBuf>,
    /// Allowlist root or the host's.
    pub filesystem: Filesystem,
    /// Bound read-only (minimal root): the CA directory and `agent.read_only`.
    pub read_only: Vec<PathBuf>,
    /// Bound writable (minimal root) and writable under Landlock.
    pub writable: Vec<PathBuf>,
    /// The agent's working directory.
    pub workdir: PathBuf,
}

/// Builds the plan; `file` is the config file (hidden too, and named in errors).
pub fn plan(v: &Validated, file: &Path) -> Result<Plan, ConfigFileError> {
    let err = |field: &str, reason: String| ConfigFileError {
        file: file.display().to_string(),
        field: field.to_owned(),
        reason,
    };
    let a = &v.agent;
    super::env::check(&a.env).map_err(|(f, r)| err(&f, r))?;
    let ids = ids(v).map_err(|(f, r)| err(&f, r))?;

    // What the agent must never see, and which field asked for it.
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let socket = v
        .workload_endpoint
        .clone()
        .map_err(|r| err("spiffe.endpoint_socket", r))?;
    if let Some(dir) = socket
        .as_ref()
        .and_then(paths::socket_path)
        .and_then(Path::parent)
    {
        dirs.push(("spiffe.endpoint_socket".into(), dir.to_owned()));
    }
    for (name, p) in &v.providers {
        if let Some(dir) = p.static_token.as_ref().and_then(|s| s.token_file.parent()) {
            dirs.push((
                format!("providers.{name}.static.token_file"),
                dir.to_owned(),
            ));
        }
        if let Some(dir) = p
            .token_grant
            .as_ref()
            .and_then(|g| g.on_behalf_of.as_ref())
            .and_then(|o| o.subject_token_file.parent())
        {
            dirs.push((
                format!("providers.{name}.token_grant.on_behalf_of.subject_token_file"),
                dir.to_owned(),
            ));
        }
        for (k, value) in p.token_grant.iter().flat_map(|g| &g.extra_params) {
            if let crate::config::ParamValue::File(f) = value
                && let Some(dir) = f.file.parent()
            {
                dirs.push((
                    format!("providers.{name}.token_grant.extra_params.{k}"),
                    dir.to_owned(),
                ));
            }
        }
    }
    if let Some(dir) = v
        .settings
        .config
        .ca
        .key_file
        .as_deref()
        .and_then(Path::parent)
    {
        dirs.push(("ca.key_file".into(), dir.to_owned()));
    }
    if let Some(dir) = v.settings.config.ca.key_dir.as_deref() {
        dirs.push(("ca.key_dir".into(), dir.to_owned()));
    }
    // The admin token opens /revoke; the audit trail is evidence the agent must not edit.
    for (field, f) in [
        (
            "admin.token_file",
            v.admin.as_ref().and_then(|a| a.token_file.as_deref()),
        ),
        ("audit.file", v.audit.file.as_deref()),
    ] {
        if let Some(dir) = f.and_then(Path::parent) {
            dirs.push((field.into(), dir.to_owned()));
        }
    }
    let absolute = |field: &str, p: &Path| -> Result<Resolved, ConfigFileError> {
        let p = if p.is_absolute() {
            p.to_owned()
        } else {
            std::env::current_dir()
                .map_err(|e| err(field, format!("cannot resolve a relative path: {e}")))?
                .join(p)
        };
        paths::resolve(&p).map_err(|r| err(field, r))
    };
    let mut hide_dirs = Vec::new();
    let mut hide_files = Vec::new();
    let mut create = Vec::new();
    for (field, d) in &dirs {
        let r = absolute(field, d)?;
        if !r.exists {
            create.push(r.path.clone());
        }
        hide_dirs.push((field.clone(), r.path));
    }
    for (i, h) in a.hide.iter().enumerate() {
        let field = format!("agent.hide[{i}]");
        let r = absolute(&field, h)?;
        if r.exists && !r.path.is_dir() {
            files.push((field, r.path));
        } else {
            if !r.exists {
                create.push(r.path.clone());
            }
            hide_dirs.push((field, r.path));
        }
    }
    // The config holds the providers' wiring and maybe secrets: never the agent's to read.
    let cfg = absolute("(file)", file)?;
    if cfg.exists {
        files.push(("(file)".into(), cfg.path));
    }
    for (field, f) in files {
        hide_files.push((field, f));
    }

    let ca_dir = absolute("ca.dir", &v.settings.config.ca.dir)?.path;
    let workdir = match &a.workdir {
        Some(w) => {
            let r = absolute("agent.workdir", w)?;
            if !r.exists || !r.path.is_dir() {
                return Err(err(
                    "agent.workdir",
                    format!("{} is not a directory", r.path.display()),
                ));
            }
            Some(r.path)
        }
        None => None,
    };
    let mut read_only = vec![ca_dir.clone()];
    for (i, p) in a.read_only.iter().enumerate() {
        read_only.push(existing(
            &absolute(&format!("agent.read_only[{i}]"), p)?,
            &format!("agent.read_only[{i}]"),
            &err,
        )?);
    }
    let mut writable: Vec<PathBuf> = workdir.iter().cloned().collect();
    for (i, p) in a.writable.iter().enumerate() {
        writable.push(existing(
            &absolute(&format!("agent.writable[{i}]"), p)?,
            &format!("agent.writable[{i}]"),
            &err,
        )?);
    }
    if a.filesystem == Filesystem::Host && !a.read_only.is_empty() {
        return Err(err(
            "agent.read_only",
            "only means something with filesystem: minimal (with host, everything not hidden is visible)".into(),
        ));
    }

    for (field, d) in &hide_dirs {
        if d == Path::new("/") {
            return Err(err(field, "cannot hide the root directory: keep the socket, token and key files in directories of their own".into()));
        }
        for (what, p) in [
            ("the CA directory", Some(&ca_dir)),
            ("the workdir", workdir.as_ref()),
        ] {
            if let Some(p) = p.filter(|p| p.starts_with(d)) {
                return Err(err(
                    field,
                    format!(
                        "hiding {} would also hide {what} {} the agent needs",
                        d.display(),
                        p.display()
                    ),
                ));
            }
        }
    }
    let workdir = match (workdir, a.filesystem) {
        (Some(w), _) => w,
        (None, Filesystem::Minimal) => PathBuf::from("/tmp"),
        (None, Filesystem::Host) => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    let mut hide_dirs: Vec<PathBuf> = hide_dirs.into_iter().map(|(_, d)| d).collect();
    hide_dirs.sort();
    hide_dirs.dedup();
    let mut hide_files: Vec<PathBuf> = hide_files.into_iter().map(|(_, f)| f).collect();
    hide_files.sort();
    hide_files.dedup();
    create.sort();
    create.dedup();
    Ok(Plan {
        ids,
        hide_dirs,
        hide_files,
        create,
        filesystem: a.filesystem,
        read_only,
        writable,
        workdir,
    })
}

fn existing(
    r: &Resolved,
    field: &str,
    err: &impl Fn(&str, String) -> ConfigFileError,
) -> Result<PathBuf, ConfigFileError> {
    if r.exists {
        Ok(r.path.clone())
    } else {
        Err(err(field, format!("{} does not exist", r.path.display())))
    }
}

/// The agent's uid and gid from `agent.user`, `agent.group`, `agent.uid_range`.
fn ids(v: &Validated) -> Result<Ids, (String, String)> {
    use nix::unistd::{Group, User};
    let a = &v.agent;
    let full = v.isolation == Isolation::Full;
    let (first, last) = a.uid_range.map_or(uid::DEFAULT_RANGE, |[f, l]| (f, l));
    if first == 0 || first > last || last >= 65534 {
        return Err((
            "agent.uid_range".into(),
            format!("[{first}, {last}] must satisfy 0 < first <= last < 65534"),
        ));
    }
    let (uid, primary) = match a.user.as_deref() {
        None => {
            if let Some(g) = &a.group {
                return Err((
                    "agent.group".into(),
                    format!(
                        "'{g}' needs agent.user too: a leased uid comes with the gid of the same number"
                    ),
                ));
            }
            return Ok(Ids::Leased(first, last));
        }
        Some(u) => match u.parse::<u32>() {
            Ok(n) => (
                n,
                User::from_uid(n.into())
                    .ok()
                    .flatten()
                    .map(|u| u.gid.as_raw()),
            ),
            Err(_) => {
                let user = User::from_name(u)
                    .ok()
                    .flatten()
                    .ok_or_else(|| ("agent.user".to_owned(), format!("no user named '{u}'")))?;
                (user.uid.as_raw(), Some(user.gid.as_raw()))
            }
        },
    };
    let gid = match a.group.as_deref() {
        None => primary.unwrap_or(65534),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| ("agent.group".to_owned(), format!("no group named '{g}'")))?
                .gid
                .as_raw(),
        },
    };
    if full && uid == 0 {
        return Err((
            "agent.user".into(),
            "root (uid 0) is refused under isolation: full: root in the sandbox could lift the covers over the Workload API socket and the secrets".into(),
        ));
    }
    if full && gid == 0 {
        return Err((
            "agent.group".into(),
            "group 0 is refused under isolation: full: it can read root's group-readable files"
                .into(),
        ));
    }
    Ok(Ids::Fixed(uid, gid))
}
