//! Parsers for the /proc/net files the netstat probe reads, as the kernel writes them. Each
//! takes the file's text and returns plain rows; naming and typing them as metrics is the
//! caller's business.

/// `snmp` and `netstat`: pairs of lines `Tcp: Name1 Name2 ...` / `Tcp: 1 2 ...`, returned as
/// (section, field, value). Values are signed (`Tcp: MaxConn` is -1).
pub fn sections(text: &str) -> Vec<(String, String, i64)> {
    let mut rows = Vec::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((section, names)), Some((section2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            break;
        };
        if section != section2 {
            // Out of step (a section without values): stop rather than mislabel.
            break;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse::<i64>() {
                rows.push((section.to_string(), name.to_string(), v));
            }
        }
    }
    rows
}

/// `snmp6`: lines `Udp6NoPorts 3`, returned as (section, field, value) with the section
/// split off the name (`Udp6`, `NoPorts`) for Ip6, Icmp6, Udp6 and UdpLite6.
pub fn snmp6(text: &str) -> Vec<(String, String, i64)> {
    // Longest first: UdpLite6 before Udp6 would not matter, Icmp6 does not start with Ip6.
    const SECTIONS: [&str; 4] = ["UdpLite6", "Udp6", "Icmp6", "Ip6"];
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (name, value) = (fields.next()?, fields.next()?.parse().ok()?);
            let section = SECTIONS.iter().find(|s| name.starts_with(*s))?;
            Some((
                section.to_string(),
                name[section.len()..].to_string(),
                value,
            ))
        })
        .collect()
}

/// One interface of `dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dev {
    pub device: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

/// `dev`: two header lines, then `name: rx(8 columns) tx(8 columns)`.
pub fn dev(text: &str) -> Vec<Dev> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            (v.len() >= 16).then(|| Dev {
                device: name.trim().to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_drops: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_drops: v[11],
            })
        })
        .collect()
}

/// `sockstat`: lines `TCP: inuse 3 orphan 0 tw 0 alloc 4 mem 1`, as (protocol, key, value)
/// with the protocol lower-cased (`sockets: used 7` is protocol `sockets`).
pub fn sockstat(text: &str) -> Vec<(String, String, u64)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let Some((proto, rest)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for pair in fields.chunks_exact(2) {
            if let Ok(v) = pair[1].parse() {
                rows.push((proto.trim().to_ascii_lowercase(), pair[0].to_string(), v));
            }
        }
    }
    rows
}

/// One CPU of `softnet_stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Softnet {
    pub cpu: u32,
    pub processed: u64,
    pub dropped: u64,
    pub time_squeeze: u64,
}

/// `softnet_stat`: one line of hex columns per online CPU; since Linux 5.10 the 13th column
/// is the CPU's number (before, the line's position is the best guess).
pub fn softnet(text: &str) -> Vec<Softnet> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let v: Vec<u64> = line
                .split_whitespace()
                .map(|f| u64::from_str_radix(f, 16).unwrap_or(0))
                .collect();
            (v.len() >= 3).then(|| Softnet {
                cpu: v.get(12).map_or(i as u32, |c| *c as u32),
                processed: v[0],
                dropped: v[1],
                time_squeeze: v[2],
            })
        })
        .collect()
}

/// `stat/nf_conntrack`: a header of column names, then one line of hex values per CPU.
/// Returns each column summed over the CPUs, except `entries` (the namespace's table size,
/// the same on every line) which is returned as the first line has it.
pub fn conntrack_stat(text: &str) -> Vec<(String, u64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut sums = vec![0u64; names.len()];
    for (i, line) in lines.enumerate() {
        for (k, f) in line.split_whitespace().enumerate().take(names.len()) {
            let v = u64::from_str_radix(f, 16).unwrap_or(0);
            if names[k] == "entries" {
                if i == 0 {
                    sums[k] = v;
                }
            } else {
                sums[k] = sums[k].wrapping_add(v);
            }
        }
    }
    names.into_iter().map(String::from).zip(sums).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_sections_pair_names_and_values() {
        let text = "Ip: Forwarding DefaultTTL InReceives\nIp: 1 64 12\n\
                    Tcp: RtoAlgorithm MaxConn CurrEstab\nTcp: 1 -1 3\n";
        assert_eq!(
            sections(text),
            vec![
                ("Ip".into(), "Forwarding".into(), 1),
                ("Ip".into(), "DefaultTTL".into(), 64),
                ("Ip".into(), "InReceives".into(), 12),
                ("Tcp".into(), "RtoAlgorithm".into(), 1),
                ("Tcp".into(), "MaxConn".into(), -1),
                ("Tcp".into(), "CurrEstab".into(), 3),
            ]
        );
        // A truncated file yields what was paired, nothing mislabelled.
        assert_eq!(sections("TcpExt: A B\nIpExt: 1 2\n"), vec![]);
    }

    #[test]
    fn snmp6_rows_split_section_and_field() {
        let text = "Ip6InReceives                   \t2\nIcmp6InErrors \t0\nUdp6NoPorts\t3\nUdpLite6InErrors 1\n";
        assert_eq!(
            snmp6(text),
            vec![
                ("Ip6".into(), "InReceives".into(), 2),
                ("Icmp6".into(), "InErrors".into(), 0),
                ("Udp6".into(), "NoPorts".into(), 3),
                ("UdpLite6".into(), "InErrors".into(), 1),
            ]
        );
    }

    #[test]
    fn dev_rows() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets\n\
            \x20   lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n\
            \x20 eth0: 5 6 7 8 0 0 0 0 9 10 11 12 0 0 0 0\n";
        let rows = dev(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1],
            Dev {
                device: "eth0".into(),
                rx_bytes: 5,
                rx_packets: 6,
                rx_errors: 7,
                rx_drops: 8,
                tx_bytes: 9,
                tx_packets: 10,
                tx_errors: 11,
                tx_drops: 12,
            }
        );
    }

    #[test]
    fn sockstat_rows() {
        let text =
            "sockets: used 7\nTCP: inuse 3 orphan 0 tw 1 alloc 4 mem 2\nFRAG: inuse 0 memory 0\n";
        let rows = sockstat(text);
        assert!(rows.contains(&("sockets".into(), "used".into(), 7)));
        assert!(rows.contains(&("tcp".into(), "tw".into(), 1)));
        assert!(rows.contains(&("tcp".into(), "mem".into(), 2)));
        assert!(rows.contains(&("frag".into(), "memory".into(), 0)));
    }

    #[test]
    fn softnet_rows_with_and_without_cpu_column() {
        let new = "0000000a 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003\n";
        assert_eq!(
            softnet(new),
            vec![Softnet {
                cpu: 3,
                processed: 10,
                dropped: 1,
                time_squeeze: 2
            }]
        );
        let old = "00000001 00000000 00000000\n00000002 00000000 00000000\n";
        assert_eq!(softnet(old)[1].cpu, 1);
    }

    #[test]
    fn conntrack_sums_cpus_but_not_entries() {
        let text = "entries  clashres found insert_failed\n\
                    00000005 00000001 00000000 00000002\n\
                    00000005 00000001 00000000 0000000a\n";
        assert_eq!(
            conntrack_stat(text),
            vec![
                ("entries".into(), 5),
                ("clashres".into(), 2),
                ("found".into(), 0),
                ("insert_failed".into(), 12),
            ]
        );
    }
}
