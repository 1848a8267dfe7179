//! Embeds the web UI (`web/` at the workspace root) into the binary: one table of
//! path, bytes, content type and ETag, generated into `OUT_DIR/assets.rs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    // Read when the script runs, not when it was compiled: a target directory shared
    // with (or copied from) another checkout must embed this checkout's web/.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let web = Path::new(&manifest_dir).join("../../web");
    println!("cargo:rerun-if-changed={}", web.display());
    let mut files = Vec::new();
    collect(&web, &web, &mut files);
    files.sort();
    let mut out = String::from(
        "/// The embedded web UI: (path, bytes, content type, ETag).\n\
         pub(crate) static ASSETS: &[(&str, &[u8], &str, &str)] = &[\n",
    );
    for (path, file) in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let bytes = std::fs::read(file).expect("web asset is readable");
        let _ = writeln!(
            out,
            "    ({path:?}, include_bytes!({:?}), {:?}, \"\\\"{:016x}\\\"\"),",
            file.canonicalize().expect("web asset path").display(),
            content_type(path),
            fnv(&bytes),
        );
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set")).join("assets.rs");
    std::fs::write(dest, out).expect("write assets.rs");
}

/// Files under `dir` that are served (`node_modules`, tests and dotfiles are not).
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            || name == "node_modules"
            || name == "tests"
            || name == "package.json"
            || name == "package-lock.json"
        {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((format!("/{rel}"), path));
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") | Some("webmanifest") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
