//! A container's network: prepare (decide, make nothing), attach (veth or macvlan, addresses,
//! routes, forwards, shaping), detach, release, and its generated /etc files.

use super::*;

impl Networks {
    // ------------------------------------------------------------------ containers

    /// Step 1 of a start: decide everything, make nothing. Takes (or reuses) the lease,
    /// reserves host ports (checking berth's own forwards and the host's listeners), names the
    /// host interface, checks the interfaces exist. `user_namespace` is whether the container
    /// gets one (for the `host` check).
    pub async fn prepare(
        &mut self,
        container: &str,
        spec: &NetSpec,
        user_namespace: bool,
    ) -> Result<Plan> {
        crate::name::validate(container)
            .map_err(|_| NetError::BadContainerName(container.to_string()))?;
        spec.check(user_namespace)?;
        if self.attached.contains_key(container) {
            return Err(NetError::AlreadyAttached(container.to_string()));
        }
        let mut plan = Plan {
            container: container.to_string(),
            mode: spec.mode.clone(),
            network: None,
            lease: None,
            new_lease: false,
            host_if: None,
            forwards: Vec::new(),
            rate: spec.rate,
            macvlan_parent: None,
            interfaces: Vec::new(),
            reservations: Vec::new(),
        };
        if spec.mode.own_netns() {
            for i in &spec.interfaces {
                let l = self
                    .host
                    .link_by_name(i.as_str())
                    .await?
                    .ok_or_else(|| NetError::NoSuchInterface(i.to_string()))?;
                plan.interfaces.push((i.clone(), l.index));
            }
        }
        match &spec.mode {
            NetworkMode::Bridge(net) => {
                let def = self.store.get(net)?.clone();
                let (lease, new) = self.store.lease(net, container, spec.ip4, spec.ip6)?;
                plan.new_lease = new;
                plan.lease = Some(lease.clone());
                plan.host_if = Some(self.pick_ifname("vb-", container));
                plan.network = Some(def.clone());
                if let Err(e) = self.plan_ports(&mut plan, spec, &def, &lease) {
                    self.abandon(plan)?;
                    return Err(e);
                }
            }
            NetworkMode::Veth => plan.host_if = Some(self.pick_ifname("ve-", container)),
            NetworkMode::Macvlan(parent) => {
                let l = self
                    .host
                    .link_by_name(parent.as_str())
                    .await?
                    .ok_or_else(|| NetError::NoSuchInterface(parent.to_string()))?;
                plan.macvlan_parent = Some((parent.clone(), l.index));
            }
            NetworkMode::None | NetworkMode::Host | NetworkMode::Container(_) => {}
        }
        Ok(plan)
    }

    pub(super) fn pick_ifname(&self, prefix: &str, container: &str) -> IfName {
        let taken = |n: &IfName| {
            self.attached
                .values()
                .any(|l| l.att.container != container && l.att.host_if.as_ref() == Some(n))
        };
        (0..)
            .map(|salt| host_ifname(prefix, container, salt))
            .find(|n| !taken(n))
            .expect("some salt is free")
    }
}

impl Networks {
    /// Give up a plan that will not be attached (the start failed before step 4): frees its
    /// host ports and, if this prepare took it, its lease.
    pub fn abandon(&mut self, plan: Plan) -> Result<()> {
        if plan.new_lease {
            self.store.release(&plan.container)?;
        }
        Ok(())
    }

    /// Step 4 of a start: plug the container into its network. `netns` is its network
    /// namespace (`/proc/PID/ns/net` of the helper after it unshared). On error everything
    /// made is undone (and the plan's new lease freed) before returning.
    pub async fn attach(&mut self, plan: Plan, netns: impl AsFd) -> Result<Attachment> {
        let netns = netns.as_fd();
        let att = Attachment {
            container: plan.container.clone(),
            mode: plan.mode.clone(),
            network: plan.network.as_ref().map(|d| d.name.clone()),
            host_if: plan.host_if.clone(),
            ip4: plan.lease.as_ref().map(|l| l.ip4),
            ip6: plan.lease.as_ref().and_then(|l| l.ip6),
            gateway4: plan.network.as_ref().map(|d| d.gateway4()),
            gateway6: plan.network.as_ref().and_then(|d| d.gateway6()),
            forwards: plan.forwards.clone(),
            rate: plan.rate,
            moved: plan.interfaces.iter().map(|(n, _)| n.clone()).collect(),
            ifb: match (&plan.host_if, plan.rate) {
                (Some(h), Some(_)) => Some(format!("bi-{}", &h.as_str()[3..]).parse()?),
                _ => None,
            },
        };
        if !plan.mode.own_netns() {
            return Ok(att);
        }
        let needs_record = att.host_if.is_some() || !att.moved.is_empty();
        if needs_record {
            self.write_record(&att)?;
        }
        let mut made = Made::default();
        match self.attach_inner(&plan, &att, netns, &mut made).await {
            Ok(()) => {}
            Err(e) => {
                let undo = self.undo(&att, &made, Some(netns)).await;
                let rec = if needs_record {
                    self.remove_record(&att.container)
                } else {
                    Ok(())
                };
                let lease = if plan.new_lease {
                    self.store.release(&plan.container).map(|_| ())
                } else {
                    Ok(())
                };
                return Err(match undo.and(rec).and(lease) {
                    Ok(()) => e,
                    Err(c) => NetError::Cleanup(Box::new(e), Box::new(c)),
                });
            }
        }
        for f in &att.forwards {
            self.ports
                .entry((f.host_port, f.proto))
                .or_default()
                .push((f.host_ip, att.container.clone()));
        }
        if let (Some(net), Some(ip4)) = (&att.network, att.ip4) {
            let rec = self.names.entry(net.clone()).or_default();
            rec.write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(att.container.to_ascii_lowercase(), (Some(ip4), att.ip6));
        }
        let keep_ns = if att.moved.is_empty() {
            None
        } else {
            Some(
                netns
                    .try_clone_to_owned()
                    .map_err(|e| NetError::io("duplicating", "netns fd", e))?,
            )
        };
        self.attached.insert(
            att.container.clone(),
            Live {
                att: att.clone(),
                netns: keep_ns,
                _reservations: plan.reservations,
            },
        );
        Ok(att)
    }

    pub(super) async fn attach_inner(
        &mut self,
        plan: &Plan,
        att: &Attachment,
        netns: std::os::fd::BorrowedFd<'_>,
        made: &mut Made,
    ) -> Result<()> {
        let master = match &plan.network {
            Some(def) => Some(self.ensure_up(&def.name).await?),
            None => None,
        };
        // The container-side socket is opened on its own thread while the host side makes
        // the veth: the two round trips overlap.
        let cnl = Nl::in_netns(netns);
        let host_side = async {
            match &plan.host_if {
                Some(h) => self
                    .host
                    .add_veth(
                        h.as_str(),
                        master,
                        "eth0",
                        plan.lease.as_ref().map(|l| netlink::mac_for(l.ip4)),
                        netns,
                    )
                    .await
                    .inspect(|_| {
                        if master.is_some()
                            && let Err(e) = disable_port_ipv6(h.as_str())
                        {
                            tracing::debug!("cannot turn IPv6 off on port {h}: {e}, ignoring");
                        }
                    })
                    .map(Some),
                None => Ok(None),
            }
        };
        let (cnl, host_index) = tokio::join!(cnl, host_side);
        if let Ok(Some(i)) = host_index {
            made.veth = Some(i);
        }
        let cnl = cnl?;
        host_index?;
        if let (NetworkMode::Veth, Some(i)) = (&plan.mode, made.veth) {
            self.host
                .set_alias(i, &format!("berth:{}", plan.container))
                .await?;
        }
        if let Some((_, parent)) = &plan.macvlan_parent {
            self.host.add_macvlan(*parent, "eth0", netns).await?;
        }
        for (name, index) in &plan.interfaces {
            self.host.move_link(*index, netns, true).await?;
            made.moved.push(name.clone());
        }
        // Inside the container: lo up while eth0 is looked up; then eth0 up, addresses and
        // routes queued together. The kernel handles one socket's requests in order, so the
        // routes find their addresses; the answers come back as one round trip, not five.
        let lo = cnl.set_up(1); // lo is ifindex 1 in every netns (LOOPBACK_IFINDEX)
        let lookup = async {
            match made.veth {
                Some(_) => cnl.link_by_name("eth0").await.map(|l| l.map(|l| l.index)),
                None => Ok(None),
            }
        };
        let (lo, eth0) = tokio::join!(lo, lookup);
        lo?;
        let eth0 = match (made.veth, eth0?) {
            (Some(_), None) => return Err(NetError::NoSuchInterface("eth0 (container)".into())),
            (_, e) => e,
        };
        if let Some(eth0) = eth0 {
            type Step<'a> =
                std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;
            let mut steps: Vec<Step<'_>> = vec![Box::pin(cnl.set_up(eth0))];
            if let (Some(def), Some(lease)) = (&plan.network, &plan.lease) {
                steps.push(Box::pin(cnl.add_address(
                    eth0,
                    IpAddr::V4(lease.ip4),
                    def.subnet4.prefix(),
                )));
                if let (Some(ip6), Some(s6)) = (lease.ip6, def.subnet6) {
                    steps.push(Box::pin(cnl.add_address(
                        eth0,
                        IpAddr::V6(ip6),
                        s6.prefix(),
                    )));
                }
                steps.push(Box::pin(
                    cnl.add_default_route(IpAddr::V4(def.gateway4()), eth0),
                ));
                if let (Some(_), Some(g6)) = (lease.ip6, def.gateway6()) {
                    steps.push(Box::pin(cnl.add_default_route(IpAddr::V6(g6), eth0)));
                }
            }
            futures_util::future::try_join_all(steps).await?;
        }
        if let (Some(rate), Some(i), Some(ifb)) = (plan.rate, made.veth, &att.ifb) {
            made.ifb = true; // possibly half made: undo deletes it by name
            self.host
                .shape(i, ifb.as_str(), &format!("berth:{}", plan.container), rate)
                .await?;
        }
        if !plan.forwards.is_empty() {
            nftnl::apply(true, &plan.forwards)?;
            made.forwards = true;
        }
        Ok(())
    }

    /// Undo what `made` says was made (or, with `Made::all`, everything the attachment
    /// implies). Keeps going after a failure and returns the first error.
    pub(super) async fn undo(
        &self,
        att: &Attachment,
        made: &Made,
        netns: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<()> {
        let mut first: Option<NetError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r
                && first.is_none()
            {
                first = Some(e);
            }
        };
        if made.forwards && !att.forwards.is_empty() {
            note(withdraw(&att.forwards));
        }
        if !made.moved.is_empty() {
            // Without the netns (gone) physical NICs already went back to the initial netns.
            if let Some(ns) = netns {
                note(self.move_back(ns, &made.moved).await);
            }
        }
        if let (true, Some(ifb)) = (made.ifb || made.all, &att.ifb) {
            match self.host.link_by_name(ifb.as_str()).await {
                Ok(Some(l)) => note(self.host.del_link(l.index).await),
                Ok(None) => {}
                Err(e) => note(Err(e)),
            }
        }
        match made.veth {
            Some(i) => note(self.host.del_link(i).await),
            None if made.all => {
                if let Some(h) = &att.host_if {
                    match self.host.link_by_name(h.as_str()).await {
                        Ok(Some(l)) => note(self.host.del_link(l.index).await),
                        Ok(None) => {}
                        Err(e) => note(Err(e)),
                    }
                }
            }
            None => {}
        }
        first.map_or(Ok(()), Err)
    }

    pub(super) async fn move_back(
        &self,
        netns: std::os::fd::BorrowedFd<'_>,
        names: &[IfName],
    ) -> Result<()> {
        let cnl = Nl::in_netns(netns).await?;
        for n in names {
            if let Some(l) = cnl.link_by_name(n.as_str()).await? {
                cnl.move_link(l.index, self.host_netns.as_fd(), false)
                    .await?;
            }
        }
        Ok(())
    }

    /// Step 6: the container stopped (or is being stopped). Removes its veth, forwards,
    /// shaping and name records, moves NICs back; keeps its lease. Unknown containers are a
    /// no-op (detach is idempotent).
    pub async fn detach(&mut self, container: &str) -> Result<()> {
        let Some(live) = self.attached.remove(container) else {
            return Ok(());
        };
        let att = &live.att;
        for f in &att.forwards {
            if let Some(v) = self.ports.get_mut(&(f.host_port, f.proto)) {
                v.retain(|(_, c)| c != container);
                if v.is_empty() {
                    self.ports.remove(&(f.host_port, f.proto));
                }
            }
        }
        if let Some(net) = &att.network
            && let Some(r) = self.names.get(net)
        {
            r.write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&container.to_ascii_lowercase());
        }
        let made = Made {
            all: true,
            veth: None,
            ifb: true,
            forwards: true,
            moved: att.moved.clone(),
        };
        let undone = self
            .undo(att, &made, live.netns.as_ref().map(|f| f.as_fd()))
            .await;
        let rec = self.remove_record(container);
        undone.and(rec)
    }

    /// The container was removed: free its leases.
    pub fn release(&mut self, container: &str) -> Result<Vec<Lease>> {
        self.store.release(container)
    }

    /// The current attachment of a container (`berthctl port` lists `forwards`).
    pub fn attachment(&self, container: &str) -> Option<&Attachment> {
        self.attached.get(container).map(|l| &l.att)
    }

    /// rx/tx of the container's interface, from the container's point of view (read on the
    /// host side of its veth, where received and sent swap).
    pub async fn stats(&self, container: &str) -> Result<Option<LinkStats>> {
        let Some(h) = self
            .attached
            .get(container)
            .and_then(|l| l.att.host_if.clone())
        else {
            return Ok(None);
        };
        let Some(l) = self.host.link_by_name(h.as_str()).await? else {
            return Ok(None);
        };
        let s = self.host.link_stats(l.index).await?;
        Ok(Some(LinkStats {
            rx_bytes: s.tx_bytes,
            tx_bytes: s.rx_bytes,
            rx_packets: s.tx_packets,
            tx_packets: s.rx_packets,
        }))
    }

    /// The container's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` contents for
    /// this attachment (berthd writes them unless the image or a bind mount provides them).
    pub fn container_files(&self, att: &Attachment, hostname: &str) -> (String, String, String) {
        let own = files::own_addrs(att.ip4, att.ip6);
        let resolver = att
            .network
            .as_ref()
            .and_then(|n| self.up.get(n))
            .is_some_and(|u| u.dns.is_some());
        // With the resolver, peers are found by name live; listing them here would make each
        // start cost more as more containers run, and the list would go stale.
        let mut peers: Vec<(String, IpAddr)> = Vec::new();
        if let (Some(net), false) = (&att.network, resolver) {
            for l in self.store.leases(net) {
                if l.container != att.container && self.attached.contains_key(&l.container) {
                    peers.push((l.container.clone(), IpAddr::V4(l.ip4)));
                }
            }
        }
        peers.sort();
        let (host_ns, search) = files::host_upstreams();
        let resolv = match (att.gateway4, resolver) {
            (Some(gw), true) => files::resolv_conf(&[IpAddr::V4(gw)], &[]),
            _ => files::resolv_conf(&host_ns, &search),
        };
        (
            files::hosts(hostname, &own, &peers),
            files::hostname(hostname),
            resolv,
        )
    }
}
