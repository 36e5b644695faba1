//! What a request's first elements tell: the command name (with the subcommand of container
//! commands), how many of its arguments are keys, and the few arguments the session acts on.
//! Only command and subcommand names and small integers (`SELECT` index, `HELLO` protocol,
//! `numkeys`) are ever read; every other argument is skipped unread.

use super::resp::int;

/// Longest command or subcommand name kept (the longest real ones are about 25 bytes).
pub const MAX_NAME: usize = 32;

/// Commands whose first argument is a subcommand, reported as `CLIENT SETNAME`.
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Commands whose first argument is their only key.
const ONE_KEY: &[&str] = &[
    "APPEND",
    "BITCOUNT",
    "BITFIELD",
    "BITPOS",
    "DECR",
    "DECRBY",
    "DUMP",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETNX",
    "HSTRLEN",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PFADD",
    "PSETEX",
    "PTTL",
    "RESTORE",
    "RPOP",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SCARD",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SORT",
    "SPOP",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "STRLEN",
    "TTL",
    "TYPE",
    "XACK",
    "XADD",
    "XAUTOCLAIM",
    "XCLAIM",
    "XDEL",
    "XLEN",
    "XPENDING",
    "XRANGE",
    "XREVRANGE",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZINCRBY",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
];

/// Commands whose arguments are all keys.
const ALL_KEYS: &[&str] = &[
    "DEL",
    "EXISTS",
    "MGET",
    "PFCOUNT",
    "PFMERGE",
    "SDIFF",
    "SDIFFSTORE",
    "SINTER",
    "SINTERSTORE",
    "SUNION",
    "SUNIONSTORE",
    "TOUCH",
    "UNLINK",
    "WATCH",
];

/// Commands whose arguments are keys but the last (a timeout).
const KEYS_THEN_TIMEOUT: &[&str] = &["BLPOP", "BRPOP", "BZPOPMAX", "BZPOPMIN"];

/// Commands whose first two arguments are keys.
const TWO_KEYS: &[&str] = &[
    "BLMOVE",
    "BRPOPLPUSH",
    "COPY",
    "GEOSEARCHSTORE",
    "LMOVE",
    "RENAME",
    "RENAMENX",
    "RPOPLPUSH",
    "SMOVE",
    "ZRANGESTORE",
];

/// `numkeys` as first argument, the keys after it.
const NUMKEYS_FIRST: &[&str] = &[
    "LMPOP",
    "SINTERCARD",
    "ZDIFF",
    "ZINTER",
    "ZINTERCARD",
    "ZMPOP",
    "ZUNION",
];

/// `numkeys` as second argument, after a script/function or a destination key.
const NUMKEYS_SECOND: &[&str] = &[
    "EVAL",
    "EVALSHA",
    "EVALSHA_RO",
    "EVAL_RO",
    "FCALL",
    "FCALL_RO",
    "ZDIFFSTORE",
    "ZINTERSTORE",
    "ZUNIONSTORE",
];

/// Destination key before `numkeys` (counted as a key).
const DEST_FIRST: &[&str] = &["ZDIFFSTORE", "ZINTERSTORE", "ZUNIONSTORE"];

/// A command name as sent, upper-cased; None unless 1..=MAX_NAME bytes of letters, digits and
/// `_ - . | :` starting with a letter (module commands are `MODULE.CMD`).
pub fn name(raw: &[u8]) -> Option<String> {
    let first = raw.first()?;
    if raw.len() > MAX_NAME
        || !first.is_ascii_alphabetic()
        || !raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.|:".contains(b))
    {
        return None;
    }
    Some(String::from_utf8_lossy(raw).to_ascii_uppercase())
}

/// Bytes of argument `idx` (1 or 2; 0 is the name) the session needs, for a command whose name
/// was read as `name` (None: unknown).
pub fn wants(idx: usize, name: Option<&str>) -> usize {
    let Some(n) = name else { return 0 };
    let needed = match idx {
        1 => CONTAINERS.contains(&n) || NUMKEYS_FIRST.contains(&n) || n == "SELECT" || n == "HELLO",
        2 => NUMKEYS_SECOND.contains(&n),
        _ => false,
    };
    if needed { MAX_NAME } else { 0 }
}

fn small(arg: Option<&[u8]>) -> Option<u64> {
    arg.and_then(int).and_then(|n| u64::try_from(n).ok())
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// How many of the `args` arguments of `name` are keys (0 for commands not in the tables).
pub fn keys(name: &str, args: u32, arg1: Option<&[u8]>, arg2: Option<&[u8]>) -> u32 {
    let n = u64::from(args);
    let k = if ONE_KEY.contains(&name) {
        n.min(1)
    } else if ALL_KEYS.contains(&name) {
        n
    } else if KEYS_THEN_TIMEOUT.contains(&name) {
        n.saturating_sub(1)
    } else if TWO_KEYS.contains(&name) {
        n.min(2)
    } else if name == "MSET" || name == "MSETNX" {
        n / 2
    } else if NUMKEYS_FIRST.contains(&name) {
        small(arg1).map_or(0, |k| k.min(n.saturating_sub(1)))
    } else if NUMKEYS_SECOND.contains(&name) {
        let dest = u64::from(DEST_FIRST.contains(&name) && n > 0);
        dest + small(arg2).map_or(0, |k| k.min(n.saturating_sub(2)))
    } else {
        0
    };
    clamp(k)
}

/// `CLIENT SETNAME` for a container command with a valid subcommand, else the name.
pub fn full_name(name: &str, arg1: Option<&[u8]>) -> String {
    if CONTAINERS.contains(&name)
        && let Some(sub) = arg1.and_then(self::name)
    {
        return format!("{name} {sub}");
    }
    name.to_owned()
}

/// Argument as a small integer (`SELECT 2`, `HELLO 3`).
pub fn small_arg(arg: Option<&[u8]>) -> Option<u32> {
    small(arg).and_then(|n| u32::try_from(n).ok())
}
