//! Attaching programs so that they outlive the daemon: TCX links (6.6+) or cls_bpf
//! filters for TC, XDP links, all pinned, and swapped atomically by the next daemon.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{
        links::{FdLink, Link, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf,
};
use oxlay_common::program_names;

use super::*;
use crate::config::DecapMode;

impl Datapath {
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

    /// Before TCX, the parent NIC needs a clsact qdisc for the program: adds one if it
    /// has none, and says whether it did (for uninstall to take away).
    pub fn add_clsact_for_l2(&self, interface: &str) -> bool {
        !has_tcx() && tc::qdisc_add_clsact(interface).is_ok()
    }

    /// Attaches the layer-2 switch's receive side to the `[l2] parent` NIC: frames for
    /// local containers go to them, the rest to the host untouched.
    pub fn attach_l2_parent(&mut self, interface: &str, ifindex: u32) -> Result<()> {
        self.attach_tc(program_names::L2_FROM_WIRE, interface)
            .with_context(|| format!("cannot attach the layer-2 program to {interface}"))?;
        self.l2_parent = Some((interface.to_owned(), ifindex));
        Ok(())
    }

    /// Detaches the layer-2 program from a NIC that is no longer the parent.
    pub fn detach_l2_program(&self, interface: &str) {
        self.unpin_link(program_names::L2_FROM_WIRE, interface);
    }

    /// Attaches the receive side of encryption to oxlay's WireGuard device: what it
    /// decrypts is classified and delivered as if it came off the underlay.
    pub fn attach_wireguard(&mut self, interface: &str) -> Result<()> {
        self.attach_tc(program_names::FROM_WIREGUARD, interface)
            .with_context(|| format!("cannot attach oxlay's program to {interface}"))?;
        self.wireguard = Some(interface.to_owned());
        Ok(())
    }

    /// Forgets the program on a WireGuard device that goes away (its link's pin).
    pub fn detach_wireguard(&self, interface: &str) {
        self.unpin_link(program_names::FROM_WIREGUARD, interface);
    }

    /// The `[l2] parent` NIC's ifindex, once its program is attached.
    pub fn l2_parent(&self) -> Option<u32> {
        self.l2_parent.as_ref().map(|(_, index)| *index)
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
    pub(super) fn link_pin(&self, program: &str, interface: &str) -> PathBuf {
        self.pin_dir.join(format!("link_{interface}_{program}"))
    }

    /// Removing the pin drops the last reference to the link: the program detaches.
    /// Before TCX the filter is deleted instead (it may be gone with its interface).
    pub(super) fn unpin_link(&self, program: &str, interface: &str) {
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
    pub(super) fn attach_tc(&mut self, program: &str, interface: &str) -> Result<()> {
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
    pub(super) fn attach_xdp(&mut self, program: &str, interface: &str) -> Result<()> {
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
}

/// TCX (6.6+): TC programs attach through bpf links, which can be pinned.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Before TCX: the cls_bpf priority of all oxlay filters, ahead of the usual 49152
/// that tc and other loaders pick.
pub(super) const NETLINK_PRIORITY: u16 = 1;

/// Before TCX: each TC program's filter handle, fixed so a new daemon finds its filter;
/// None for programs that are not TC programs.
pub(super) fn netlink_handle(program: &str) -> Option<TcHandle> {
    let minor = match program {
        program_names::DECAP_TC => 1,
        program_names::XDP_DELIVER_TC => 2,
        program_names::FROM_CONTAINER => 3,
        program_names::L2_FROM_WIRE => 4,
        program_names::FROM_WIREGUARD => 5,
        _ => return None,
    };
    Some(TcHandle::new(0, minor))
}

/// Hands the link pinned at `pin`, if any, to `replace` (which swaps in the new
/// program). True when that worked; a link that cannot be updated (its interface went
/// away) is unpinned, and the caller attaches afresh.
pub(super) fn replace_pinned(pin: &Path, replace: impl FnOnce(FdLink) -> Result<()>) -> bool {
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

pub(super) fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

pub(super) fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}
