//! The interface manager: picks the node's active path among its links and says when the node
//! must have a sibling relay for it (seed 004, HANet, §2.2.2 "Interface manager" and §2.3: one
//! active interface at a time among the GOOD ones; public before private, because a private
//! link reaches the outside world only through a sibling; faster before slower; back to the
//! public link when it revives).
//!
//! The links' status comes from their [`LinkMonitor`](crate::link_monitor::LinkMonitor)s; each
//! link's class and speed are declared in the configuration (the seed has the administrator
//! write them to `/proc`: the kernel cannot know whether a link is public).
//!
//! Against flapping, a link that comes back after having been down is not trusted for a
//! hold-down: the manager does not leave a working active link for it before it stayed up that
//! long, and prefers any settled link to it. A link's first rise since start is trusted at
//! once (nothing says it flaps, and the node has no path until some link is up).
//!
//! No I/O and no clock: [`InterfaceManager::link_changed`] and [`InterfaceManager::tick`] take
//! the time (`Duration` since any origin) and return [`PathReport`]s;
//! [`InterfaceManager::next_deadline`] says when a hold-down ends.

use std::fmt;
use std::time::Duration;

/// Whether a link reaches the outside world itself or only the siblings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkClass {
    Public,
    Private,
}

/// One declared interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredLink {
    pub name: String,
    pub class: LinkClass,
    /// Declared speed in Mbit/s; only compared between links.
    pub speed_mbps: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterfaceManagerError {
    #[error("no interface declared")]
    NoLinks,
    #[error("interface {name:?} is declared twice")]
    Duplicate { name: String },
    #[error("interface name at position {index} is empty")]
    EmptyName { index: usize },
    #[error("interface {name:?} is not declared")]
    UnknownLink { name: String },
}

/// Why the active path changed, for logs and hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathReason {
    /// The first link came up since start.
    FirstLinkUp,
    /// The active link went down.
    ActiveDown { link: String },
    /// A better link stayed up through its hold-down (or rose for the first time), and the
    /// manager moved to it.
    BetterLinkSettled { link: String },
}

impl fmt::Display for PathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathReason::FirstLinkUp => write!(f, "first link up"),
            PathReason::ActiveDown { link } => write!(f, "active link {link} went down"),
            PathReason::BetterLinkSettled { link } => {
                write!(f, "better link {link} is up and settled")
            }
        }
    }
}

/// What the manager reports, for the shell to carry out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathReport {
    /// The active link changed (`None`: no link is up).
    ActiveChanged {
        from: Option<String>,
        to: Option<String>,
        reason: PathReason,
    },
    /// No public link is up but the private link `via` is: the node must ask a sibling at its
    /// other end to relay for it. Reported again with the new link when the private path moves.
    RelayNeeded { via: String },
    /// A public link is active again (or no link at all is): the relay is no longer needed.
    RelayEnded,
    /// No link is up: the node cannot serve and must fail over as without relay.
    NoPath,
    /// The node has a path again after [`PathReport::NoPath`].
    PathRestored,
}

#[derive(Debug, Clone)]
struct LinkState {
    declared: DeclaredLink,
    up: bool,
    /// Has risen at least once since start.
    ever_up: bool,
    /// Up since this instant (meaningful while `up`).
    up_since: Duration,
    /// Came back after a fall and must stay up until then before it is trusted.
    held_until: Option<Duration>,
}

impl LinkState {
    fn settled(&self, now: Duration) -> bool {
        self.up && self.held_until.is_none_or(|until| now >= until)
    }
}

/// Picks the active path among the declared links.
#[derive(Debug, Clone)]
pub struct InterfaceManager {
    links: Vec<LinkState>,
    hold_down: Duration,
    active: Option<usize>,
    /// Whether the node had a path once (so that [`PathReport::NoPath`] follows a loss, and
    /// the start with no link up yet reports it too).
    no_path_reported: bool,
}

impl InterfaceManager {
    /// A manager of these links, all down until their monitors say otherwise. Links earlier in
    /// `links` win ties of class and speed.
    pub fn new(
        links: Vec<DeclaredLink>,
        hold_down: Duration,
    ) -> Result<InterfaceManager, InterfaceManagerError> {
        if links.is_empty() {
            return Err(InterfaceManagerError::NoLinks);
        }
        for (index, link) in links.iter().enumerate() {
            if link.name.is_empty() {
                return Err(InterfaceManagerError::EmptyName { index });
            }
            if links[..index].iter().any(|l| l.name == link.name) {
                return Err(InterfaceManagerError::Duplicate {
                    name: link.name.clone(),
                });
            }
        }
        Ok(InterfaceManager {
            links: links
                .into_iter()
                .map(|declared| LinkState {
                    declared,
                    up: false,
                    ever_up: false,
                    up_since: Duration::ZERO,
                    held_until: None,
                })
                .collect(),
            hold_down,
            active: None,
            no_path_reported: false,
        })
    }

    /// The active link, if any.
    pub fn active(&self) -> Option<&DeclaredLink> {
        self.active.map(|i| &self.links[i].declared)
    }

    /// Whether the node needs a sibling to relay for it (its active link is private).
    pub fn relay_needed(&self) -> bool {
        self.active().is_some_and(|l| l.class == LinkClass::Private)
    }

    /// Whether the named link is up as last reported.
    pub fn is_up(&self, name: &str) -> Option<bool> {
        self.links
            .iter()
            .find(|l| l.declared.name == name)
            .map(|l| l.up)
    }

    /// When the earliest hold-down of a link that is up ends (call [`Self::tick`] then).
    pub fn next_deadline(&self, now: Duration) -> Option<Duration> {
        self.links
            .iter()
            .filter(|l| l.up)
            .filter_map(|l| l.held_until)
            .filter(|&until| until > now)
            .min()
    }

    /// The named link's monitor says it is up (or down). An undeclared name changes nothing
    /// and is refused, so that the shell can log its configuration mismatch.
    pub fn link_changed(
        &mut self,
        name: &str,
        up: bool,
        now: Duration,
    ) -> Result<Vec<PathReport>, InterfaceManagerError> {
        let Some(index) = self.links.iter().position(|l| l.declared.name == name) else {
            return Err(InterfaceManagerError::UnknownLink {
                name: name.to_owned(),
            });
        };
        let link = &mut self.links[index];
        if link.up != up {
            link.up = up;
            if up {
                link.up_since = now;
                link.held_until = if link.ever_up && !self.hold_down.is_zero() {
                    Some(now + self.hold_down)
                } else {
                    None
                };
                link.ever_up = true;
            }
        }
        Ok(self.reselect(now))
    }

    /// Time passed: a hold-down may have ended.
    pub fn tick(&mut self, now: Duration) -> Vec<PathReport> {
        self.reselect(now)
    }

    /// The rank of a link: lower is better. Public before private, then faster, then declared
    /// earlier.
    fn rank(&self, index: usize) -> (LinkClass, std::cmp::Reverse<u64>, usize) {
        let d = &self.links[index].declared;
        (d.class, std::cmp::Reverse(d.speed_mbps), index)
    }

    fn best(&self, now: Duration) -> Option<usize> {
        let settled = (0..self.links.len())
            .filter(|&i| self.links[i].settled(now))
            .min_by_key(|&i| self.rank(i));
        // A link still in hold-down is used only when no settled link is up: a flapping link
        // is better than no path.
        settled.or_else(|| {
            (0..self.links.len())
                .filter(|&i| self.links[i].up)
                .min_by_key(|&i| self.rank(i))
        })
    }

    fn reselect(&mut self, now: Duration) -> Vec<PathReport> {
        let mut out = Vec::new();
        let best = self.best(now);
        let active_up = self.active.is_some_and(|a| self.links[a].up);
        let next = match (self.active, best) {
            // The active link works: move only to a better settled link.
            (Some(a), Some(b)) if active_up => {
                if b != a && self.links[b].settled(now) && self.rank(b) < self.rank(a) {
                    Some(b)
                } else {
                    Some(a)
                }
            }
            (_, b) => b,
        };
        if next == self.active {
            if next.is_none() && !self.no_path_reported {
                self.no_path_reported = true;
                out.push(PathReport::NoPath);
            }
            return out;
        }
        let reason = match (self.active, next) {
            (Some(a), _) if !self.links[a].up => PathReason::ActiveDown {
                link: self.links[a].declared.name.clone(),
            },
            (None, _) => PathReason::FirstLinkUp,
            (Some(_), Some(n)) => PathReason::BetterLinkSettled {
                link: self.links[n].declared.name.clone(),
            },
            (Some(_), None) => unreachable!("an active link that is up stays active"),
        };
        let was_relaying = self.relay_needed();
        let from = self.active().map(|l| l.name.clone());
        self.active = next;
        let to = self.active().map(|l| l.name.clone());
        out.push(PathReport::ActiveChanged {
            from,
            to: to.clone(),
            reason,
        });
        let relaying = self.relay_needed();
        if was_relaying && !relaying {
            out.push(PathReport::RelayEnded);
        }
        match &to {
            None => {
                self.no_path_reported = true;
                out.push(PathReport::NoPath);
            }
            Some(name) => {
                if self.no_path_reported {
                    self.no_path_reported = false;
                    out.push(PathReport::PathRestored);
                }
                if relaying {
                    out.push(PathReport::RelayNeeded { via: name.clone() });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn link(name: &str, class: LinkClass, speed_mbps: u64) -> DeclaredLink {
        DeclaredLink {
            name: name.into(),
            class,
            speed_mbps,
        }
    }

    /// eth0 public 1000, eth1 public 100, priv0 private 10000, priv1 private 1000.
    fn manager() -> InterfaceManager {
        InterfaceManager::new(
            vec![
                link("eth1", LinkClass::Public, 100),
                link("priv1", LinkClass::Private, 1000),
                link("eth0", LinkClass::Public, 1000),
                link("priv0", LinkClass::Private, 10000),
            ],
            ms(500),
        )
        .unwrap()
    }

    fn changed(from: Option<&str>, to: Option<&str>, reason: PathReason) -> PathReport {
        PathReport::ActiveChanged {
            from: from.map(Into::into),
            to: to.map(Into::into),
            reason,
        }
    }

    #[test]
    fn declarations_are_checked() {
        assert_eq!(
            InterfaceManager::new(vec![], ms(1)).unwrap_err(),
            InterfaceManagerError::NoLinks
        );
        let twice = vec![
            link("a", LinkClass::Public, 1),
            link("a", LinkClass::Private, 1),
        ];
        assert_eq!(
            InterfaceManager::new(twice, ms(1)).unwrap_err(),
            InterfaceManagerError::Duplicate { name: "a".into() }
        );
        assert_eq!(
            InterfaceManager::new(vec![link("", LinkClass::Public, 1)], ms(1)).unwrap_err(),
            InterfaceManagerError::EmptyName { index: 0 }
        );
        let mut m = manager();
        assert_eq!(
            m.link_changed("nope", true, ms(0)).unwrap_err(),
            InterfaceManagerError::UnknownLink {
                name: "nope".into()
            }
        );
    }

    #[test]
    fn public_before_private_and_faster_before_slower() {
        let mut m = manager();
        let out = m.link_changed("priv0", true, ms(0)).unwrap();
        assert_eq!(
            out,
            vec![
                changed(None, Some("priv0"), PathReason::FirstLinkUp),
                PathReport::RelayNeeded {
                    via: "priv0".into()
                },
            ]
        );
        assert!(m.relay_needed());
        // A first rise is trusted at once: the public link wins over the faster private one.
        let out = m.link_changed("eth1", true, ms(1)).unwrap();
        assert_eq!(
            out,
            vec![
                changed(
                    Some("priv0"),
                    Some("eth1"),
                    PathReason::BetterLinkSettled {
                        link: "eth1".into()
                    }
                ),
                PathReport::RelayEnded,
            ]
        );
        let out = m.link_changed("eth0", true, ms(2)).unwrap();
        assert_eq!(
            out,
            vec![changed(
                Some("eth1"),
                Some("eth0"),
                PathReason::BetterLinkSettled {
                    link: "eth0".into()
                }
            )]
        );
        // A slower link rising changes nothing.
        assert!(m.link_changed("priv1", true, ms(3)).unwrap().is_empty());
    }

    #[test]
    fn losing_the_public_links_asks_for_relay_and_failback_waits_for_hold_down() {
        let mut m = manager();
        m.link_changed("eth0", true, ms(0)).unwrap();
        m.link_changed("priv1", true, ms(0)).unwrap();
        m.link_changed("priv0", true, ms(0)).unwrap();
        let out = m.link_changed("eth0", false, ms(100)).unwrap();
        assert_eq!(
            out,
            vec![
                changed(
                    Some("eth0"),
                    Some("priv0"),
                    PathReason::ActiveDown {
                        link: "eth0".into()
                    }
                ),
                PathReport::RelayNeeded {
                    via: "priv0".into()
                },
            ]
        );
        // eth0 returns: held down for 500 ms.
        assert!(m.link_changed("eth0", true, ms(200)).unwrap().is_empty());
        assert_eq!(m.next_deadline(ms(200)), Some(ms(700)));
        assert!(m.tick(ms(699)).is_empty());
        // It flaps: the hold-down starts again.
        assert!(m.link_changed("eth0", false, ms(650)).unwrap().is_empty());
        assert!(m.link_changed("eth0", true, ms(660)).unwrap().is_empty());
        assert!(m.tick(ms(700)).is_empty());
        assert_eq!(m.next_deadline(ms(700)), Some(ms(1160)));
        let out = m.tick(ms(1160));
        assert_eq!(
            out,
            vec![
                changed(
                    Some("priv0"),
                    Some("eth0"),
                    PathReason::BetterLinkSettled {
                        link: "eth0".into()
                    }
                ),
                PathReport::RelayEnded,
            ]
        );
        assert_eq!(m.next_deadline(ms(1160)), None);
    }

    #[test]
    fn the_private_path_moving_asks_for_relay_again() {
        let mut m = manager();
        m.link_changed("priv0", true, ms(0)).unwrap();
        m.link_changed("priv1", true, ms(0)).unwrap();
        let out = m.link_changed("priv0", false, ms(10)).unwrap();
        assert_eq!(
            out,
            vec![
                changed(
                    Some("priv0"),
                    Some("priv1"),
                    PathReason::ActiveDown {
                        link: "priv0".into()
                    }
                ),
                PathReport::RelayNeeded {
                    via: "priv1".into()
                },
            ]
        );
    }

    #[test]
    fn no_path_and_restored() {
        let mut m = manager();
        assert_eq!(
            m.link_changed("eth0", false, ms(0)).unwrap(),
            vec![PathReport::NoPath]
        );
        assert!(m.link_changed("eth1", false, ms(0)).unwrap().is_empty());
        let out = m.link_changed("priv1", true, ms(1)).unwrap();
        assert_eq!(
            out,
            vec![
                changed(None, Some("priv1"), PathReason::FirstLinkUp),
                PathReport::PathRestored,
                PathReport::RelayNeeded {
                    via: "priv1".into()
                },
            ]
        );
        let out = m.link_changed("priv1", false, ms(2)).unwrap();
        assert_eq!(
            out,
            vec![
                changed(
                    Some("priv1"),
                    None,
                    PathReason::ActiveDown {
                        link: "priv1".into()
                    }
                ),
                PathReport::RelayEnded,
                PathReport::NoPath,
            ]
        );
    }

    #[test]
    fn a_held_link_is_better_than_no_path() {
        let mut m = manager();
        m.link_changed("eth0", true, ms(0)).unwrap();
        m.link_changed("eth0", false, ms(10)).unwrap();
        let out = m.link_changed("eth0", true, ms(20)).unwrap();
        assert_eq!(
            out,
            vec![
                changed(None, Some("eth0"), PathReason::FirstLinkUp),
                PathReport::PathRestored,
            ]
        );
        // A settled private link does not displace a working public one still held.
        assert!(m.link_changed("priv0", true, ms(30)).unwrap().is_empty());
        assert_eq!(m.active().unwrap().name, "eth0");
    }

    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Set(usize, bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..400).prop_map(Step::Wait),
            (0usize..4, any::<bool>()).prop_map(|(i, up)| Step::Set(i, up)),
        ]
    }

    proptest! {
        /// Whatever the links do: the active link is up; some link is active whenever one is
        /// up; no settled link ranks before the active one; the reports tell every change
        /// (each `ActiveChanged` starts where the last ended) and relay is asked exactly while
        /// the active link is private.
        #[test]
        fn the_choice_follows_the_rules(steps in proptest::collection::vec(step(), 0..100)) {
            let mut m = manager();
            let names: Vec<String> = m.links.iter().map(|l| l.declared.name.clone()).collect();
            let mut now = Duration::ZERO;
            let mut active: Option<String> = None;
            let mut relaying_via: Option<String> = None;
            let mut no_path = false;
            for s in steps {
                let out = match s {
                    Step::Wait(d) => { now += ms(d); m.tick(now) }
                    Step::Set(i, up) => m.link_changed(&names[i], up, now).unwrap(),
                };
                for r in out {
                    match r {
                        PathReport::ActiveChanged { from, to, .. } => {
                            prop_assert_eq!(&from, &active);
                            prop_assert_ne!(&from, &to);
                            active = to;
                        }
                        PathReport::RelayNeeded { via } => {
                            prop_assert_eq!(Some(&via), active.as_ref());
                            relaying_via = Some(via);
                        }
                        PathReport::RelayEnded => {
                            prop_assert!(relaying_via.take().is_some());
                        }
                        PathReport::NoPath => {
                            prop_assert!(active.is_none() && !no_path);
                            no_path = true;
                        }
                        PathReport::PathRestored => {
                            prop_assert!(active.is_some() && no_path);
                            no_path = false;
                        }
                    }
                }
                prop_assert_eq!(active.as_deref(), m.active().map(|l| l.name.as_str()));
                prop_assert_eq!(relaying_via.is_some(), m.relay_needed());
                let any_up = m.links.iter().any(|l| l.up);
                match m.active {
                    Some(a) => {
                        prop_assert!(m.links[a].up, "picked a down link");
                        for (i, l) in m.links.iter().enumerate() {
                            prop_assert!(
                                !(l.settled(now) && m.rank(i) < m.rank(a)),
                                "settled {} ranks before active {}", l.declared.name,
                                m.links[a].declared.name
                            );
                        }
                    }
                    None => prop_assert!(!any_up),
                }
                if let Some(d) = m.next_deadline(now) {
                    prop_assert!(d > now);
                }
            }
        }
    }
}
