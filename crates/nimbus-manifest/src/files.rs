//! Checks that need the app directory: the code a manifest names must exist.

use std::path::Path;

use nimbus_core::RuntimeKind;

use crate::check::Locations;
use crate::{Diagnostic, Manifest};

pub(crate) fn check(
    manifest: &Manifest,
    locations: &Locations,
    app_dir: &Path,
    src: &str,
    file: &str,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (name, f) in &manifest.functions {
        let loc = locations.functions.get(name).cloned().unwrap_or_default();
        let code_dir = app_dir.join(&f.code);
        let code_at = loc.code.unwrap_or(loc.table);
        if !code_dir.is_dir() {
            out.push(Diagnostic::at(
                file,
                src,
                code_at,
                &format!("functions.{name}.code"),
                format!(
                    "code directory \"{}\" does not exist; create it or point `code` at the function's directory",
                    f.code
                ),
            ));
            continue;
        }
        let handler_at = loc.handler.unwrap_or(loc.table);
        let field = format!("functions.{name}.handler");
        match f.runtime {
            RuntimeKind::Node => {
                let module = f.handler.rsplit_once('.').map_or("", |(m, _)| m);
                let found = ["js", "mjs", "cjs"].iter().any(|ext| code_dir.join(format!("{module}.{ext}")).is_file());
                if !found {
                    out.push(Diagnostic::at(
                        file,
                        src,
                        handler_at,
                        &field,
                        format!(
                            "handler \"{}\" needs {module}.js, {module}.mjs or {module}.cjs in \"{}\"; none exists",
                            f.handler, f.code
                        ),
                    ));
                }
            }
            RuntimeKind::Python => {
                let module = f.handler.rsplit_once('.').map_or("", |(m, _)| m).replace('.', "/");
                if !code_dir.join(format!("{module}.py")).is_file()
                    && !code_dir.join(&module).join("__init__.py").is_file()
                {
                    out.push(Diagnostic::at(
                        file,
                        src,
                        handler_at,
                        &field,
                        format!("handler \"{}\" needs {module}.py in \"{}\"; it does not exist", f.handler, f.code),
                    ));
                }
            }
            RuntimeKind::Provided => {
                let bootstrap = code_dir.join("bootstrap");
                if !is_executable(&bootstrap) {
                    out.push(Diagnostic::at(file, src, code_at, &format!("functions.{name}.code"), format!(
                        "a provided function needs an executable file named \"bootstrap\" in \"{}\"; add one (chmod +x) that speaks the Lambda Runtime API",
                        f.code
                    )));
                }
            }
        }
    }
    out
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
