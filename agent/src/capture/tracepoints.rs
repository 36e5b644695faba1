//! Where the fields the kernel programs read sit in each tracepoint's record, from the kernel's
//! own format files (`events/<category>/<name>/format` under tracefs). Layouts change between
//! kernel versions, so the programs take the offsets from a global set at load
//! ([`socktrace_common::TpOffsets`]) instead of compiling them in.

use std::{collections::HashMap, path::Path};

use socktrace_common::TpOffsets;

/// One field a program reads: its tracepoint, name, size in bytes, and where its offset goes.
struct Field {
    event: &'static str,
    name: &'static str,
    size: u16,
    slot: fn(&mut TpOffsets) -> &mut u16,
}

const FIELDS: &[Field] = &[
    Field {
        event: "sock/sock_send_length",
        name: "sk",
        size: 8,
        slot: |o| &mut o.len_sk,
    },
    Field {
        event: "sock/sock_send_length",
        name: "family",
        size: 2,
        slot: |o| &mut o.len_family,
    },
    Field {
        event: "sock/sock_send_length",
        name: "protocol",
        size: 2,
        slot: |o| &mut o.len_protocol,
    },
    Field {
        event: "sock/sock_send_length",
        name: "flags",
        size: 4,
        slot: |o| &mut o.len_flags,
    },
    // The programs read both length tracepoints with the same offsets: they must agree.
    Field {
        event: "sock/sock_recv_length",
        name: "sk",
        size: 8,
        slot: |o| &mut o.len_sk,
    },
    Field {
        event: "sock/sock_recv_length",
        name: "family",
        size: 2,
        slot: |o| &mut o.len_family,
    },
    Field {
        event: "sock/sock_recv_length",
        name: "protocol",
        size: 2,
        slot: |o| &mut o.len_protocol,
    },
    Field {
        event: "sock/sock_recv_length",
        name: "flags",
        size: 4,
        slot: |o| &mut o.len_flags,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "skaddr",
        size: 8,
        slot: |o| &mut o.st_skaddr,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "oldstate",
        size: 4,
        slot: |o| &mut o.st_oldstate,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "newstate",
        size: 4,
        slot: |o| &mut o.st_newstate,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "sport",
        size: 2,
        slot: |o| &mut o.st_sport,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "dport",
        size: 2,
        slot: |o| &mut o.st_dport,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "family",
        size: 2,
        slot: |o| &mut o.st_family,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "protocol",
        size: 2,
        slot: |o| &mut o.st_protocol,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "saddr",
        size: 4,
        slot: |o| &mut o.st_saddr,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "daddr",
        size: 4,
        slot: |o| &mut o.st_daddr,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "saddr_v6",
        size: 16,
        slot: |o| &mut o.st_saddr_v6,
    },
    Field {
        event: "sock/inet_sock_set_state",
        name: "daddr_v6",
        size: 16,
        slot: |o| &mut o.st_daddr_v6,
    },
    Field {
        event: "sched/sched_process_fork",
        name: "child_pid",
        size: 4,
        slot: |o| &mut o.fork_child_pid,
    },
    Field {
        event: "sched/sched_process_exec",
        name: "pid",
        size: 4,
        slot: |o| &mut o.exec_pid,
    },
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("cannot read the format of tracepoint {event} ({reason})")]
    Unreadable { event: &'static str, reason: String },
    #[error("tracepoint {event} has no field {field} on this kernel")]
    MissingField {
        event: &'static str,
        field: &'static str,
    },
    #[error(
        "tracepoint {event}: field {field} is {found} bytes here, the programs read {expected}"
    )]
    Size {
        event: &'static str,
        field: &'static str,
        found: u16,
        expected: u16,
    },
    #[error(
        "tracepoints {event} and {other} place field {field} differently; the programs read both the same way"
    )]
    Disagree {
        event: &'static str,
        other: &'static str,
        field: &'static str,
    },
}

/// `name -> (offset, size)` of every field line of a format file
/// (`field:__u16 sport; offset:24; size:2; signed:0;`, tab-separated).
pub fn parse_format(text: &str) -> HashMap<String, (u16, u16)> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let (mut offset, mut size) = (None, None);
        for part in line.split(';').map(str::trim) {
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        // The name is the declaration's last word, without an array suffix.
        let Some(word) = decl.split_whitespace().last() else {
            continue;
        };
        let name = word
            .split('[')
            .next()
            .unwrap_or(word)
            .trim_start_matches('*');
        out.insert(name.to_owned(), (offset, size));
    }
    out
}

/// The offsets, from the format files under `events` (a tracefs `events` directory).
pub fn read_offsets(events: &Path) -> Result<TpOffsets, FormatError> {
    read_offsets_with(|event| {
        std::fs::read_to_string(events.join(event).join("format")).map_err(|e| e.to_string())
    })
}

/// As [`read_offsets`], with the format files from `read`.
pub fn read_offsets_with(
    read: impl Fn(&str) -> Result<String, String>,
) -> Result<TpOffsets, FormatError> {
    let mut offsets = TpOffsets::DEFAULT;
    let mut formats: HashMap<&str, HashMap<String, (u16, u16)>> = HashMap::new();
    let mut set_by: HashMap<usize, &'static str> = HashMap::new();
    for field in FIELDS {
        if !formats.contains_key(field.event) {
            let text = read(field.event).map_err(|reason| FormatError::Unreadable {
                event: field.event,
                reason,
            })?;
            formats.insert(field.event, parse_format(&text));
        }
        let &(offset, size) = formats
            .get(field.event)
            .and_then(|f| f.get(field.name))
            .ok_or(FormatError::MissingField {
                event: field.event,
                field: field.name,
            })?;
        if size != field.size {
            return Err(FormatError::Size {
                event: field.event,
                field: field.name,
                found: size,
                expected: field.size,
            });
        }
        let slot = (field.slot)(&mut offsets);
        let key = std::ptr::from_mut(slot) as usize;
        match set_by.get(&key) {
            Some(other) if *slot != offset => {
                return Err(FormatError::Disagree {
                    event: field.event,
                    other,
                    field: field.name,
                });
            }
            _ => {
                *slot = offset;
                set_by.insert(key, field.event);
            }
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &str = "name: sock_send_length\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;\n\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;\n\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;\n\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;\n\nprint fmt: \"x\"\n";
    const STATE: &str = "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n";
    /// Linux 4.x-5.x: task names stored inline, so `child_pid` sits at 44.
    const FORK_OLD: &str = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
    const EXEC: &str = "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n";

    fn files(
        over: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Result<String, String> {
        move |event| {
            if let Some((_, text)) = over.iter().find(|(e, _)| *e == event) {
                return Ok((*text).to_owned());
            }
            match event {
                "sock/sock_send_length" | "sock/sock_recv_length" => Ok(SEND.to_owned()),
                "sock/inet_sock_set_state" => Ok(STATE.to_owned()),
                "sched/sched_process_fork" => Ok(FORK_OLD.to_owned()),
                "sched/sched_process_exec" => Ok(EXEC.to_owned()),
                other => Err(format!("no {other}")),
            }
        }
    }

    #[test]
    fn offsets_come_from_the_format_files() {
        let o = read_offsets_with(files(&[])).unwrap();
        assert_eq!(
            o,
            TpOffsets {
                fork_child_pid: 44,
                ..TpOffsets::DEFAULT
            }
        );
        assert_eq!(parse_format(STATE)["saddr_v6"], (40, 16));
        assert_eq!(parse_format(SEND)["sk"], (8, 8));
    }

    #[test]
    fn a_layout_the_programs_cannot_read_is_an_error_naming_it() {
        let missing: &[(&str, &str)] = &[(
            "sched/sched_process_exec",
            "\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n",
        )];
        assert_eq!(
            read_offsets_with(files(missing)),
            Err(FormatError::MissingField {
                event: "sched/sched_process_exec",
                field: "pid"
            })
        );
        let wide: &[(&str, &str)] = &[(
            "sched/sched_process_exec",
            "\tfield:u64 pid;\toffset:12;\tsize:8;\tsigned:1;\n",
        )];
        assert!(matches!(
            read_offsets_with(files(wide)),
            Err(FormatError::Size {
                found: 8,
                expected: 4,
                ..
            })
        ));
        let moved: &[(&str, &str)] = &[(
            "sock/sock_recv_length",
            "\tfield:void * sk;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:__u16 family;\toffset:24;\tsize:2;\tsigned:0;\n\tfield:__u16 protocol;\toffset:26;\tsize:2;\tsigned:0;\n\tfield:int flags;\toffset:28;\tsize:4;\tsigned:1;\n",
        )];
        let err = read_offsets_with(files(moved)).unwrap_err();
        assert_eq!(
            err,
            FormatError::Disagree {
                event: "sock/sock_recv_length",
                other: "sock/sock_send_length",
                field: "sk"
            }
        );
        assert!(
            err.to_string().contains("place field sk differently"),
            "{err}"
        );
        let gone = read_offsets_with(|_| Err("No such file".to_owned())).unwrap_err();
        assert_eq!(
            gone.to_string(),
            "cannot read the format of tracepoint sock/sock_send_length (No such file)"
        );
    }
}
