//! `wisp doctor`: what this machine can run and what is missing, each missing
//! thing with the command that fixes it.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use wisp_vm::image::{self, ImageKind};
use wisp_vm::{accel, initramfs, Kernel};

use crate::config::GlobalArgs;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
    /// The command that fixes it, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    home: String,
    accelerator: Option<String>,
    checks: Vec<Check>,
}

fn check(name: &str, ok: bool, detail: String, fix: &str) -> Check {
    Check {
        name: name.to_string(),
        ok,
        detail,
        fix: (!ok).then(|| fix.to_string()),
    }
}

/// First line of `tool --version`, or why it cannot run.
fn version_of(tool: &str, arg: &str) -> Result<String, String> {
    match std::process::Command::new(tool).arg(arg).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()),
        Ok(o) => Err(format!("`{tool} {arg}` failed: {}", o.status)),
        Err(e) => Err(format!("`{tool}`: {e}")),
    }
}

fn tool(name: &str, path_or_cmd: &str, arg: &str, package: &str) -> Check {
    let r = version_of(path_or_cmd, arg);
    let ok = r.is_ok() || Path::new(path_or_cmd).is_file();
    check(
        name,
        ok,
        r.unwrap_or_else(|e| e),
        &format!("apt-get install {package}"),
    )
}

pub async fn run(global: &GlobalArgs, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let home = &global.home;
    let mut checks = Vec::new();
    let qemu = wisp_vm::qemu::QemuConfig::default_binary();
    checks.push(tool(
        "qemu",
        &qemu.to_string_lossy(),
        "--version",
        "qemu-system-x86",
    ));
    checks.push(tool("busybox", "/bin/busybox", "--help", "busybox-static"));
    checks.push(tool("mke2fs", "mke2fs", "-V", "e2fsprogs"));
    checks.push(tool(
        "debootstrap",
        "debootstrap",
        "--version",
        "debootstrap",
    ));
    checks.push(tool("apt-get", "apt-get", "--version", "apt"));
    let kvm = accel::kvm_device_usable();
    checks.push(Check {
        name: "kvm".into(),
        ok: true,
        detail: match &kvm {
            Ok(()) => "/dev/kvm opens (a probe boot decides whether it is used)".into(),
            Err(e) => format!("{e}: VMs run under TCG (software emulation, slower)"),
        },
        fix: None,
    });
    let kernel = Kernel::cached(home).ok().flatten();
    checks.push(check(
        "kernel",
        kernel.is_some(),
        match &kernel {
            Some(k) => format!(
                "{} ({}) in {}",
                k.version,
                k.package_version,
                k.dir.display()
            ),
            None => format!("no guest kernel under {}", home.join("kernel").display()),
        },
        "wisp image build tiny   # fetches the kernel first",
    ));
    let agent = initramfs::find_agent();
    checks.push(check(
        "agent",
        agent.is_ok(),
        match &agent {
            Ok(a) => format!("static x86-64, {} bytes, {}", a.bytes.len(), a.origin),
            Err(e) => e.to_string(),
        },
        "unset WISP_AGENT   # the agent built into wisp is static",
    ));
    let mut accelerator = None;
    if let (Some(k), Ok(a)) = (&kernel, &agent) {
        match initramfs::ensure(k, a) {
            Ok(initrd) => {
                let c = accel::choose(home, &k.vmlinuz(), &initrd, &k.version).await;
                accelerator = Some(c.accel.to_string());
                checks.push(check(
                    "accelerator",
                    true,
                    format!("{} ({})", c.accel, c.reason),
                    "",
                ));
            }
            Err(e) => checks.push(check("initramfs", false, e.to_string(), "")),
        }
    }
    for kind in ImageKind::ALL {
        let found = image::find(home, kind).ok().flatten();
        checks.push(check(
            &format!("image {kind}"),
            found.is_some(),
            match &found {
                Some(i) => format!("volume `{}`@{}", i.volume, i.checkpoint),
                None => "not built".into(),
            },
            &format!("wisp image build {kind}"),
        ));
    }
    // Imported images: present by definition; a record that does not parse shows here.
    match image::list(home) {
        Ok(images) => {
            for i in images.iter().filter(|i| i.source.is_some()) {
                checks.push(check(
                    &format!("image {}", i.name),
                    true,
                    format!("volume `{}`@{} (imported)", i.volume, i.checkpoint),
                    "",
                ));
            }
        }
        Err(e) => checks.push(check("images", false, e.to_string(), "")),
    }
    let report = Report {
        home: home.display().to_string(),
        accelerator,
        checks,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        use crate::table::Align::Left;
        println!("WISP_HOME: {}", report.home);
        let mut table =
            crate::table::Table::new(&[("CHECK", Left), ("STATUS", Left), ("DETAIL", Left)]);
        for c in &report.checks {
            let mark = if c.ok { "ok" } else { "MISSING" };
            table.row([c.name.as_str(), mark, c.detail.as_str()]);
            if let Some(fix) = &c.fix {
                table.row(["", "", format!("fix: {fix}").as_str()]);
            }
        }
        table.print();
    }
    let missing = report.checks.iter().any(|c| !c.ok);
    Ok(if missing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
