//! The kernel side seen from userspace: loading the eBPF object, pinning its maps,
//! attaching programs, and reading and writing the maps.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray},
    programs::{
        links::{FdLink, Link, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
        Program, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader, TestRun, TestRunOptions,
};
use oxlay_common::{
    map_names, program_names, CounterInfo, DatapathConfig, Endpoint, Network, Peer, Route,
    RouteDest, COUNTERS,
};

use crate::{config::DecapMode, net::Ipv4Net};

pub mod pins;

/// The eBPF object built by build.rs, embedded so `oxlay` is a single file.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxlay.bpf.o"));

/// A route as stored in the route map, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub net_id: u32,
    pub dest: Ipv4Net,
    pub route: Route,
}

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Clone, Debug)]
pub struct TestRunOutcome {
    pub verdict: u32,
    pub packet: Vec<u8>,
    /// The kernel's average duration of one run.
    pub ns_per_run: f64,
}

/// The loaded programs and maps of one node.
pub struct Datapath {
    ebpf: Ebpf,
    /// Maps and program links are pinned here; they outlive the daemon.
    pin_dir: PathBuf,
    /// The underlay interface decapsulation was attached to.
    decap_interface: Option<String>,
    /// Pins of maps an older build used, removed once this build is attached.
    stale_pins: Vec<PathBuf>,
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

    /// Runs program `name` once per `repeat` on `packet` through BPF_PROG_TEST_RUN and
    /// returns its verdict, the packet it left, and the kernel's time per run.
    pub fn test_run(&self, name: &str, packet: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        self.test_run_ctx(name, packet, repeat, None)
    }

    /// Like [`Datapath::test_run`] once, for a TC program, with the packet marked as a
    /// GSO packet of `gso_size` (the test run sets no GSO type).
    pub fn test_run_gso(&self, name: &str, packet: &[u8], gso_size: u32) -> Result<TestRunOutcome> {
        // struct __sk_buff (uapi/linux/bpf.h): 192 bytes; the kernel takes only a few
        // fields from a test run's context, gso_segs (at 164) and gso_size (at 176)
        // among them, and wants the others zero.
        let mut ctx = [0u8; 192];
        ctx[164..168].copy_from_slice(&2u32.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        self.test_run_ctx(name, packet, 1, Some(&ctx))
    }

    fn test_run_ctx(
        &self,
        name: &str,
        packet: &[u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> Result<TestRunOutcome> {
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat,
            ..TestRunOptions::default()
        };
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        let result = match program {
            Program::SchedClassifier(p) => p.test_run(opts),
            Program::Xdp(p) => p.test_run(opts),
            _ => return Err(anyhow!("program {name} cannot be test-run")),
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of {name} failed"))?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            verdict: result.return_value,
            packet: out,
            ns_per_run: result.duration.as_nanos() as f64,
        })
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

    pub fn set_config(&mut self, config: DatapathConfig) -> Result<()> {
        let mut map: Array<&mut MapData, DatapathConfig> = self.map_mut(map_names::CONFIG)?;
        map.set(0, config, 0)
            .context("cannot write the datapath config map")
    }

    pub fn add_network(&mut self, vni: u32) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Network> = self.map_mut(map_names::NETWORKS)?;
        map.insert(
            vni,
            Network {
                net_id: vni,
                _pad: 0,
            },
            0,
        )
        .with_context(|| format!("cannot add network {vni}"))
    }

    pub fn remove_network(&mut self, vni: u32) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Network> = self.map_mut(map_names::NETWORKS)?;
        ignore_missing(map.remove(&vni)).with_context(|| format!("cannot remove network {vni}"))
    }

    /// VNIs whose packets decapsulation accepts.
    pub fn networks(&self) -> Result<Vec<u32>> {
        let map: BpfHashMap<&MapData, u32, Network> = self.map(map_names::NETWORKS)?;
        map.keys().map(|k| Ok(k?)).collect()
    }

    pub fn remove_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, [u8; 4], Peer> = self.map_mut(map_names::PEERS)?;
        ignore_missing(map.remove(&underlay.octets()))
            .with_context(|| format!("cannot remove peer {underlay}"))
    }

    pub fn add_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, [u8; 4], Peer> = self.map_mut(map_names::PEERS)?;
        map.insert(underlay.octets(), Peer::default(), 0)
            .with_context(|| format!("cannot add peer {underlay}"))
    }

    pub fn peers(&self) -> Result<Vec<Ipv4Addr>> {
        let map: BpfHashMap<&MapData, [u8; 4], Peer> = self.map(map_names::PEERS)?;
        map.keys().map(|k| Ok(Ipv4Addr::from(k?))).collect()
    }

    pub fn set_route(&mut self, net_id: u32, dest: Ipv4Net, route: Route) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, RouteDest, Route> = self.map_mut(map_names::ROUTES)?;
        map.insert(&route_key(net_id, dest), route, 0)
            .with_context(|| format!("cannot add route to {dest} in network {net_id}"))
    }

    pub fn remove_route(&mut self, net_id: u32, dest: Ipv4Net) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, RouteDest, Route> = self.map_mut(map_names::ROUTES)?;
        // Already gone (an endpoint's own route goes with the endpoint) is removed.
        ignore_missing(map.remove(&route_key(net_id, dest)))
            .with_context(|| format!("cannot remove route to {dest} in network {net_id}"))
    }

    pub fn routes(&self) -> Result<Vec<RouteEntry>> {
        let map: LpmTrie<&MapData, RouteDest, Route> = self.map(map_names::ROUTES)?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (key, route) = item?;
            let data = key.data();
            let net_id = u32::from_be_bytes(data.net);
            let dest = Ipv4Net::new(Ipv4Addr::from(data.addr), (key.prefix_len() - 32) as u8)?;
            out.push(RouteEntry {
                net_id,
                dest,
                route,
            });
        }
        out.sort_by_key(|r| (r.net_id, r.dest.addr(), r.dest.prefix_len()));
        Ok(out)
    }

    pub fn set_endpoint(&mut self, host_ifindex: u32, endpoint: Endpoint) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Endpoint> =
            self.map_mut(map_names::ENDPOINTS)?;
        map.insert(host_ifindex, endpoint, 0)
            .context("cannot add the endpoint to the endpoint map")
    }

    pub fn remove_endpoint(&mut self, host_ifindex: u32) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Endpoint> =
            self.map_mut(map_names::ENDPOINTS)?;
        ignore_missing(map.remove(&host_ifindex))
            .context("cannot remove the endpoint from the endpoint map")
    }

    /// Every counter summed over CPUs, in table order.
    pub fn counters(&self) -> Result<Vec<(&'static CounterInfo, u64)>> {
        let map: PerCpuArray<&MapData, u64> = self.map(map_names::COUNTERS)?;
        COUNTERS
            .iter()
            .map(|info| {
                let per_cpu = map.get(&(info.counter as u32), 0)?;
                Ok((info, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Attaches decapsulation to the underlay interface, replacing (atomically) what a
    /// previous daemon attached there, and removing the other mode's programs.
    pub fn attach_decap(&mut self, interface: &str, mode: DecapMode) -> Result<()> {
        let (keep, drop): (&[&str], &[&str]) = match mode {
            DecapMode::Tc => (
                &[program_names::DECAP_TC],
                &[program_names::XDP_DELIVER_TC, program_names::DECAP_XDP],
            ),
            // XDP strips; the TC program on the same interface delivers.
            DecapMode::Xdp => (
                &[program_names::XDP_DELIVER_TC, program_names::DECAP_XDP],
                &[program_names::DECAP_TC],
            ),
        };
        for program in keep {
            if *program == program_names::DECAP_XDP {
                self.attach_xdp(program, interface).with_context(|| {
                    format!("cannot attach XDP decapsulation to {interface}; try decap = \"tc\"")
                })?;
            } else {
                self.attach_tc(program, interface)?;
            }
        }
        for program in drop {
            self.unpin_link(program, interface);
        }
        self.decap_interface = Some(interface.to_owned());
        Ok(())
    }

    /// Attaches the container-egress program to a container's host-side veth (or takes
    /// over the link a previous daemon pinned there).
    pub fn attach_endpoint(&mut self, host_ifname: &str) -> Result<()> {
        self.attach_tc(program_names::FROM_CONTAINER, host_ifname)
    }

    /// Detaches from a host-side veth (which may already be gone with its container).
    pub fn detach_endpoint(&mut self, host_ifname: &str) {
        self.unpin_link(program_names::FROM_CONTAINER, host_ifname);
    }

    /// Where the link of `program` on `interface` is pinned.
    fn link_pin(&self, program: &str, interface: &str) -> PathBuf {
        self.pin_dir.join(format!("link_{interface}_{program}"))
    }

    /// Removing the pin drops the last reference to the link: the program detaches.
    /// Before TCX the filter is deleted instead (it may be gone with its interface).
    fn unpin_link(&self, program: &str, interface: &str) {
        let _ = std::fs::remove_file(self.link_pin(program, interface));
        let Some(handle) = netlink_handle(program).filter(|_| !has_tcx()) else {
            return;
        };
        if let Ok(link) = SchedClassifierLink::attached(
            interface,
            TcAttachType::Ingress,
            NETLINK_PRIORITY,
            handle,
            None,
        ) {
            let _ = link.detach();
        }
    }

    /// Attaches a TC ingress program so that it stays attached when the daemon exits,
    /// and so that the next daemon swaps its own program in atomically: not one packet
    /// meets an empty hook during an upgrade.
    ///
    /// With TCX (6.6+) that is a pinned link and `bpf_link_update`. Before, it is a
    /// cls_bpf filter on clsact with a fixed priority and handle per program: a filter
    /// found there is changed in place (cls_bpf swaps the program under RCU).
    fn attach_tc(&mut self, program: &str, interface: &str) -> Result<()> {
        let pin = self.link_pin(program, interface);
        let prog = classifier(&mut self.ebpf, program)?;
        if !has_tcx() {
            let handle = netlink_handle(program)
                .with_context(|| format!("{program} is not a TC program"))?;
            let existing = SchedClassifierLink::attached(
                interface,
                TcAttachType::Ingress,
                NETLINK_PRIORITY,
                handle,
                None,
            )
            .with_context(|| format!("no interface {interface}"))?;
            let id = match prog.attach_to_link(existing) {
                Ok(id) => id,
                Err(_) => {
                    // No filter yet (first start): clsact may exist already.
                    let _ = tc::qdisc_add_clsact(interface);
                    let options = NlOptions {
                        priority: NETLINK_PRIORITY,
                        handle,
                        classid: None,
                    };
                    prog.attach_with_options(
                        interface,
                        TcAttachType::Ingress,
                        TcAttachOptions::Netlink(options),
                    )
                    .with_context(|| {
                        format!("cannot attach {program} to TC ingress of {interface}")
                    })?
                }
            };
            // The filter belongs to the interface, not to this process: dropping the
            // link would delete it. It holds no file descriptor, so forgetting leaks
            // nothing.
            std::mem::forget(prog.take_link(id)?);
            return Ok(());
        }
        if replace_pinned(&pin, |fd| {
            prog.attach_to_link(SchedClassifierLink::try_from(fd)?)?;
            Ok(())
        }) {
            return Ok(());
        }
        let id = prog
            .attach(interface, TcAttachType::Ingress)
            .with_context(|| format!("cannot attach {program} to TC ingress of {interface}"))?;
        FdLink::try_from(prog.take_link(id)?)?
            .pin(&pin)
            .with_context(|| format!("cannot pin the link of {program} on {interface}"))?;
        Ok(())
    }

    /// Like `attach_tc`, for the XDP hook.
    fn attach_xdp(&mut self, program: &str, interface: &str) -> Result<()> {
        let pin = self.link_pin(program, interface);
        let prog = xdp(&mut self.ebpf, program)?;
        if replace_pinned(&pin, |fd| {
            prog.attach_to_link(XdpLink::try_from(fd)?)?;
            Ok(())
        }) {
            return Ok(());
        }
        let id = prog.attach(interface, XdpMode::Default)?;
        let link = prog.take_link(id)?;
        if let Ok(fd) = FdLink::try_from(link) {
            fd.pin(&pin)
                .with_context(|| format!("cannot pin the XDP link on {interface}"))?;
        }
        Ok(())
    }

    fn map<'a, T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>>(
        &'a self,
        name: &str,
    ) -> Result<T> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }

    fn map_mut<'a, T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>>(
        &'a mut self,
        name: &str,
    ) -> Result<T> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }
}

/// TCX (6.6+): TC programs attach through bpf links, which can be pinned.
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Before TCX: the cls_bpf priority of all oxlay filters, ahead of the usual 49152
/// that tc and other loaders pick.
const NETLINK_PRIORITY: u16 = 1;

/// Before TCX: each TC program's filter handle, fixed so a new daemon finds its filter;
/// None for programs that are not TC programs.
fn netlink_handle(program: &str) -> Option<TcHandle> {
    let minor = match program {
        program_names::DECAP_TC => 1,
        program_names::XDP_DELIVER_TC => 2,
        program_names::FROM_CONTAINER => 3,
        _ => return None,
    };
    Some(TcHandle::new(0, minor))
}

/// Hands the link pinned at `pin`, if any, to `replace` (which swaps in the new
/// program). True when that worked; a link that cannot be updated (its interface went
/// away) is unpinned, and the caller attaches afresh.
fn replace_pinned(pin: &Path, replace: impl FnOnce(FdLink) -> Result<()>) -> bool {
    let Ok(pinned) = PinnedLink::from_pin(pin) else {
        return false;
    };
    match replace(FdLink::from(pinned)) {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "pinned link {} is stale ({e:#}); attaching anew",
                pin.display()
            );
            let _ = std::fs::remove_file(pin);
            false
        }
    }
}

/// A removal of something already gone is not an error.
/// A removal of a key that is not there succeeded. aya reports it as `KeyNotFound` or,
/// for deletes, as the syscall's ENOENT.
fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn route_key(net_id: u32, dest: Ipv4Net) -> Key<RouteDest> {
    Key::new(
        RouteDest::prefix_len(dest.prefix_len()),
        RouteDest::new(net_id, dest.addr().octets()),
    )
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
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
