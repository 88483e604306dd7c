//! Checks that need the app directory: the code a manifest names must exist.

use std::path::Path;

use nimbus_core::registry::ARTIFACT_SKIP;
use nimbus_core::{FunctionSpec, RuntimeKind};

use crate::ctx::{FunctionLocations, Locations};
use crate::{Diagnostic, Manifest};

pub(crate) fn check(
    manifest: &mut Manifest,
    locations: &Locations,
    app_dir: &Path,
    src: &str,
    file: &str,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (name, f) in manifest.functions.iter_mut() {
        let loc = locations.functions.get(name).cloned().unwrap_or_default();
        if let Some(p) = function_files(f, &loc, app_dir) {
            out.push(Diagnostic::at(file, src, p.at, &format!("functions.{name}.{}", p.key), p.message));
        }
    }
    if let (Some(spec), Some(loc)) = (&manifest.assets, &locations.assets) {
        if let Some(p) = static_files(spec, loc, app_dir) {
            out.push(Diagnostic::at(file, src, p.at, &format!("static.{}", p.key), p.message));
        }
    }
    out
}

/// `[static]`: the directory exists inside the app directory (a link may not lead out of it),
/// and so does the fallback file.
fn static_files(spec: &crate::assets::StaticSpec, loc: &crate::ctx::AssetLocations, app_dir: &Path) -> Option<Problem> {
    let dir = app_dir.join(&spec.dir);
    let problem = |at, key, message| Some(Problem { at, key, message });
    if !dir.is_dir() {
        let message = format!(
            "static directory \"{}\" does not exist; create it or point `dir` at the app's public files",
            spec.dir
        );
        return problem(loc.dir, "dir", message);
    }
    let root = app_dir.canonicalize().unwrap_or_else(|_| app_dir.to_owned());
    if !dir.canonicalize().is_ok_and(|real| real.starts_with(&root)) {
        let message = format!(
            "static directory \"{}\" leads outside the app directory (through a link); nimbus stores only what is inside the app, so copy the files in",
            spec.dir
        );
        return problem(loc.dir, "dir", message);
    }
    if let Some(message) = link_out_of(&dir, &spec.dir) {
        let message = message.replacen("code directory", "static directory", 1).replacen(
            "a function's code directory",
            "the static directory",
            1,
        );
        return problem(loc.dir, "dir", message);
    }
    let fallback = spec.spa_fallback.as_deref().filter(|f| !dir.join(f).is_file())?;
    let message = format!(
        "spa_fallback \"{fallback}\" is not a file in \"{}\"; add it (usually index.html) or remove `spa_fallback`",
        spec.dir
    );
    problem(loc.spa_fallback.unwrap_or(loc.dir), "spa_fallback", message)
}

/// A missing or unfit file: where to point, which key of the function to name, and what to do.
struct Problem {
    at: usize,
    key: &'static str,
    message: String,
}

/// The code directory first, since nothing inside it can be checked without it; then what the
/// runtime needs in it. A wasm function's component name is filled in when it was left out.
fn function_files(f: &mut FunctionSpec, loc: &FunctionLocations, app_dir: &Path) -> Option<Problem> {
    let code_dir = app_dir.join(&f.code);
    let code_at = loc.code.unwrap_or(loc.table);
    if !code_dir.is_dir() {
        let message = format!(
            "code directory \"{}\" does not exist; create it or point `code` at the function's directory",
            f.code
        );
        return Some(Problem { at: code_at, key: "code", message });
    }
    if let Some(message) = link_out_of(&code_dir, &f.code) {
        return Some(Problem { at: code_at, key: "code", message });
    }
    let handler_at = loc.handler.unwrap_or(loc.table);
    match f.runtime {
        RuntimeKind::Node => node_handler(f, &code_dir).map(|message| Problem { at: handler_at, key: "handler", message }),
        RuntimeKind::Python => {
            python_handler(f, &code_dir).map(|message| Problem { at: handler_at, key: "handler", message })
        }
        RuntimeKind::Wasm => {
            let at = loc.component.unwrap_or(loc.table);
            match component(&code_dir, &f.wasm.component, &f.code) {
                Ok(c) => {
                    f.wasm.component = c;
                    None
                }
                Err(message) => Some(Problem { at, key: "component", message }),
            }
        }
        RuntimeKind::Provided => (!is_executable(&code_dir.join("bootstrap"))).then(|| Problem {
            at: code_at,
            key: "code",
            message: format!(
                "a provided function needs an executable file named \"bootstrap\" in \"{}\"; add one (chmod +x) that speaks the Lambda Runtime API",
                f.code
            ),
        }),
    }
}

/// The first link in the code directory that leads out of it (or to nothing). The code is
/// stored as a copy of that directory with links inside it copied as what they point at; a
/// link out of it would copy a file of the host into the function, so it is refused, here with
/// its location, and again by the artifact store.
fn link_out_of(code_dir: &Path, code: &str) -> Option<String> {
    let root = code_dir.canonicalize().ok()?;
    let skipped = |e: &walkdir::DirEntry| e.depth() > 0 && ARTIFACT_SKIP.iter().any(|s| e.file_name() == *s);
    let walk = walkdir::WalkDir::new(code_dir).sort_by_file_name().into_iter().filter_entry(|e| !skipped(e));
    for e in walk.filter_map(Result::ok).filter(|e| e.depth() > 0 && e.path_is_symlink()) {
        let parent = e.path().parent().and_then(|p| p.canonicalize().ok()).unwrap_or_default();
        let why = match e.path().canonicalize() {
            // Copying a directory that contains the link would never end.
            Ok(real) if parent.starts_with(&real) => "a directory that contains it",
            Ok(real) if real.starts_with(&root) => continue,
            Ok(_) => "outside it",
            Err(_) => "which does not exist (or loops)",
        };
        let rel = e.path().strip_prefix(code_dir).unwrap_or(e.path()).display().to_string();
        let target = std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default();
        return Some(format!(
            "code directory \"{code}\" has a link \"{rel}\" to \"{target}\", {why}; nimbus stores only what is inside a function's code directory, so copy what it needs in (links that stay inside are fine)"
        ));
    }
    None
}

/// Node resolves `index.handler` to index.js, index.mjs or index.cjs.
fn node_handler(f: &FunctionSpec, code_dir: &Path) -> Option<String> {
    let module = f.handler.rsplit_once('.').map_or("", |(m, _)| m);
    let found = ["js", "mjs", "cjs"].iter().any(|ext| code_dir.join(format!("{module}.{ext}")).is_file());
    (!found).then(|| {
        format!(
            "handler \"{}\" needs {module}.js, {module}.mjs or {module}.cjs in \"{}\"; none exists",
            f.handler, f.code
        )
    })
}

/// Python resolves `pkg.app.handler` to pkg/app.py or the package pkg/app/__init__.py.
fn python_handler(f: &FunctionSpec, code_dir: &Path) -> Option<String> {
    let module = f.handler.rsplit_once('.').map_or("", |(m, _)| m).replace('.', "/");
    let found = code_dir.join(format!("{module}.py")).is_file() || code_dir.join(&module).join("__init__.py").is_file();
    (!found).then(|| format!("handler \"{}\" needs {module}.py in \"{}\"; it does not exist", f.handler, f.code))
}

/// The component file of a wasm function: the one named, or the only `.wasm` file in the code
/// directory. It must be a component (the binary format of WASIp2), not a core module.
fn component(code_dir: &Path, named: &str, code: &str) -> Result<String, String> {
    let name = if named.is_empty() {
        let mut found: Vec<String> = std::fs::read_dir(code_dir)
            .map_err(|e| format!("cannot list \"{code}\": {e}"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".wasm"))
            .collect();
        found.sort();
        match found.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(format!(
                    "no .wasm file in \"{code}\"; build the component into it or set `component = \"FILE.wasm\"`"
                ))
            }
            many => {
                return Err(format!(
                    "\"{code}\" has several .wasm files ({}); say which with `component = \"FILE.wasm\"`",
                    many.join(", ")
                ))
            }
        }
    } else {
        named.to_owned()
    };
    let path = code_dir.join(&name);
    let mut head = [0u8; 8];
    let read = std::fs::File::open(&path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    if let Err(e) = read {
        return Err(if e.kind() == std::io::ErrorKind::NotFound {
            format!("component \"{name}\" does not exist in \"{code}\"; build it there or fix `component`")
        } else {
            format!("cannot read component \"{name}\" in \"{code}\": {e}")
        });
    }
    match head {
        // The component binary format: magic, then version 0x0d and layer 1.
        [0, b'a', b's', b'm', 0x0d, 0, 1, 0] => Ok(name),
        [0, b'a', b's', b'm', 1, 0, 0, 0] => Err(format!(
            "\"{name}\" is a core WebAssembly module, not a component; build for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
        )),
        _ => Err(format!("\"{name}\" is not a WebAssembly component (wrong magic bytes)")),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
