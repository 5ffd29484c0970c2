//! The kernel side seen from userspace: loading the eBPF object, pinning its maps,
//! attaching programs, and reading and writing the maps.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::{Ebpf, EbpfLoader};
use oxlay_common::program_names;

mod attach;
mod l2_maps;
mod maps;
pub mod pins;
mod test_run;

pub use maps::RouteEntry;
pub use test_run::TestRunOutcome;

pub use attach::has_tcx;
use attach::{classifier, xdp, NETLINK_PRIORITY};

/// The eBPF object built by build.rs, embedded so `oxlay` is a single file.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxlay.bpf.o"));

/// The loaded programs and maps of one node.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    /// Maps and program links are pinned here; they outlive the daemon.
    pub(super) pin_dir: PathBuf,
    /// The underlay interface decapsulation was attached to.
    pub(super) decap_interface: Option<String>,
    /// The `[l2] parent` NIC (name, ifindex), once its program is attached.
    pub(super) l2_parent: Option<(String, u32)>,
    /// oxlay's WireGuard device, once its program is attached.
    pub(super) wireguard: Option<String>,
    /// Pins of maps an older build used, removed once this build is attached.
    pub(super) stale_pins: Vec<PathBuf>,
}

impl Datapath {
    /// Loads the programs; maps are pinned under `pin_dir` (created if missing) and
    /// re-used from there when already pinned.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("cannot create pin directory {}", pin_dir.display()))?;
        let maps_dir = pin_dir.join("maps");
        std::fs::create_dir_all(&maps_dir)
            .with_context(|| format!("cannot create pin directory {}", maps_dir.display()))?;
        let shapes = pins::shapes(EBPF_OBJECT)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        let mut plan = Vec::new();
        for (name, shape) in &shapes {
            let path = pins::pin_path(pin_dir, name, shape);
            let stale = pins::stale_pins(pin_dir, name, &path);
            loader.map_pin_path(name, path.clone());
            plan.push((*name, path, stale));
        }
        let mut ebpf = loader.load(EBPF_OBJECT).context(
            "loading the eBPF object failed (is this root on a kernel with BPF and BTF?)",
        )?;
        // Maps whose shape changed with this build are new: fill them from the old ones
        // before any program of this build uses them.
        let mut stale_pins = Vec::new();
        for (name, path, stale) in plan {
            for old in stale {
                let map = ebpf
                    .map_mut(name)
                    .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
                match pins::migrate(name, &old, map) {
                    Ok(Ok(n)) => log::info!(
                        "map {name} changed shape with this build: {n} entries copied from {} into {}",
                        old.display(),
                        path.display()
                    ),
                    Ok(Err(why)) => log::warn!(
                        "map {name} changed shape with this build and {} is not copied: {why}; the daemon fills it anew",
                        old.display()
                    ),
                    Err(e) => log::warn!(
                        "map {name}: copying {} failed: {e:#}; the daemon fills it anew",
                        old.display()
                    ),
                }
                stale_pins.push(old);
            }
        }
        for name in [
            program_names::FROM_CONTAINER,
            program_names::DECAP_TC,
            program_names::L2_FROM_WIRE,
            program_names::FROM_WIREGUARD,
            program_names::XDP_DELIVER_TC,
            program_names::NOOP_TC,
            program_names::BENCH_FROM_CONTAINER_HASHED,
            program_names::BENCH_SET_HASH,
        ] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel rejected program {name}"))?;
        }
        for name in [program_names::DECAP_XDP, program_names::NOOP_XDP] {
            xdp(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel rejected program {name}"))?;
        }
        if !has_tcx() {
            log::info!(
                "this kernel has no TCX (Linux 6.6+): TC programs attach as cls_bpf filters on clsact (priority {NETLINK_PRIORITY}), replaced in place on upgrade"
            );
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            decap_interface: None,
            l2_parent: None,
            wireguard: None,
            stale_pins,
        })
    }

    /// Removes the pins of maps an older build used (their contents were copied at
    /// load). Call once this build's programs are attached: the old maps then go with
    /// the last program that used them.
    pub fn remove_stale_pins(&mut self) {
        for pin in std::mem::take(&mut self.stale_pins) {
            match std::fs::remove_file(&pin) {
                Ok(()) => log::info!("removed the pin of an older map {}", pin.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cannot remove the older map pin {}: {e}", pin.display()),
            }
        }
    }

    /// Removes the pinned maps and links (and their parent directory once empty): the
    /// programs detach, and the next daemon starts with empty maps.
    pub fn unpin(&self) -> Result<()> {
        if let Some(interface) = &self.decap_interface {
            // Filters before TCX are not pinned; they must be deleted.
            for program in [program_names::DECAP_TC, program_names::XDP_DELIVER_TC] {
                self.unpin_link(program, interface);
            }
        }
        if let Some((interface, _)) = &self.l2_parent {
            self.unpin_link(program_names::L2_FROM_WIRE, interface);
        }
        if let Some(interface) = &self.wireguard {
            self.unpin_link(program_names::FROM_WIREGUARD, interface);
        }
        match std::fs::remove_dir_all(&self.pin_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e)
                    .with_context(|| format!("cannot remove pins in {}", self.pin_dir.display()))
            }
            _ => {}
        }
        if let Some(parent) = self
            .pin_dir
            .parent()
            .filter(|p| *p != Path::new("/sys/fs/bpf"))
        {
            let _ = std::fs::remove_dir(parent); // fails, as it should, while others use it
        }
        Ok(())
    }
}

/// Mounts bpffs at /sys/fs/bpf when `dir` lies under it and nothing is mounted there
/// (as inside `ip netns exec`, which remounts /sys).
fn ensure_bpffs(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) || is_bpffs(root) {
        return Ok(());
    }
    std::fs::create_dir_all(root).ok();
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call;
    // data is null, which bpffs accepts.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("/sys/fs/bpf is not a bpffs and mounting one failed (are you root?)");
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; zeroed is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}
