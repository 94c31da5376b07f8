-- OpMob signalling (docs/protocol.md, version 1) for Wireshark and tshark.
--
--   tshark -X lua_script:$(opmob pcap lua) -r capture.pcap
--   Wireshark: copy this file to ~/.local/lib/wireshark/plugins/ (Help > About > Folders)
--
-- A heuristic dissector on UDP: a datagram that starts with "OM" and version 1 is OpMob
-- signalling, whatever the port (relays share one port with RTP and RTCP). It shows the header,
-- the message by name and every field of an open body (REGISTER, CHALLENGE, ... and every
-- protected message `opmob pcap decrypt` opened with a lab relay's key log: it writes them open,
-- flag P clear, no tag); a protected body (flag P) stays ciphertext, shown with its tag.
-- Field numbers and names are those of docs/protocol.md §9-§11.

local opmob = Proto("opmob", "OpMob signalling")

local TYPES = {
  [0x01] = "REGISTER", [0x02] = "AUTH_RESPONSE", [0x03] = "AUTH_FAILURE", [0x04] = "DEREGISTER",
  [0x05] = "KEEPALIVE", [0x08] = "AFFILIATE", [0x09] = "DEAFFILIATE", [0x0A] = "AFFILIATION_QUERY",
  [0x10] = "CALL_SETUP", [0x11] = "CALL_NOTIFY", [0x12] = "CALL_END", [0x14] = "EMERGENCY_ALERT",
  [0x15] = "EMERGENCY_CANCEL", [0x18] = "DEVICE_CONTROL", [0x20] = "AUTH_VECTOR_REQUEST",
  [0x21] = "ROAM_NOTIFY", [0x22] = "ROAM_CANCEL", [0x28] = "LINK_HELLO", [0x29] = "LINK_AUTH",
  [0x2C] = "GROUP_ATTACH", [0x2D] = "GROUP_DETACH",
  [0x81] = "CHALLENGE", [0x82] = "REGISTER_ACK", [0x83] = "REGISTER_REJECT", [0x84] = "DEREGISTER_ACK",
  [0x85] = "KEEPALIVE_ACK", [0x88] = "AFFILIATE_ACK", [0x89] = "DEAFFILIATE_ACK",
  [0x8A] = "AFFILIATION_REPORT", [0x90] = "CALL_ACK", [0x91] = "CALL_NOTIFY_ACK", [0x92] = "CALL_END_ACK",
  [0x94] = "EMERGENCY_ACK", [0x98] = "DEVICE_CONTROL_ACK", [0xA0] = "AUTH_VECTOR_RESPONSE",
  [0xA1] = "ROAM_ACK", [0xA2] = "ROAM_CANCEL_ACK", [0xA8] = "LINK_CHALLENGE", [0xA9] = "LINK_ACK",
  [0xAC] = "GROUP_ATTACH_ACK", [0xAD] = "GROUP_DETACH_ACK", [0xFE] = "PENDING", [0xFF] = "ERROR",
}

local CAUSES = {
  [0] = "UNSPECIFIED", [1] = "BAD_REQUEST", [2] = "UNSUPPORTED", [3] = "AUTH_FAILED",
  [4] = "UNKNOWN_SESSION", [5] = "UNKNOWN_IDENTITY", [6] = "HOME_UNREACHABLE",
  [7] = "ROAMING_NOT_ALLOWED", [8] = "STUNNED", [9] = "KILLED", [10] = "NO_RESOURCES",
  [11] = "NOT_AUTHORIZED", [12] = "UNKNOWN_GROUP", [13] = "UNKNOWN_CALL", [14] = "BUSY",
  [15] = "INTERNAL_ERROR", [16] = "AUTN_INVALID", [17] = "SYNC_FAILURE", [18] = "POWER_OFF",
  [19] = "HANDOVER", [20] = "EXPIRED", [21] = "NORMAL", [22] = "PREEMPTED", [23] = "LINK_DOWN",
}
local CALL_TYPES = { [0] = "NORMAL", [1] = "EMERGENCY", [2] = "IMMINENT_PERIL", [3] = "BROADCAST" }
local ACTIONS = { [1] = "STUN", [2] = "REVIVE", [3] = "KILL" }
local STATUSES = { [0] = "OK", [1] = "STUNNED", [2] = "REREGISTER" }
local RESULTS = {
  [0] = "OK", [1] = "UNKNOWN_GROUP", [2] = "NOT_AUTHORIZED", [3] = "LIMIT_REACHED",
  [4] = "NOT_AFFILIATED", [5] = "LOCAL_ONLY",
}

-- TLV type -> { name, kind }; kinds: id (identity), b16 (16 bytes), u32, u16, u8, or a structure.
local TLVS = {
  [0x01] = { "identity", "id" }, [0x02] = { "relay", "id" }, [0x03] = { "group", "id" },
  [0x04] = { "prev_relay", "id" }, [0x05] = { "peer", "id" },
  [0x08] = { "nonce", "b16" }, [0x09] = { "rand", "b16" }, [0x0A] = { "autn", "b16" },
  [0x0B] = { "res", "b16" }, [0x0C] = { "auts", "b16" }, [0x0D] = { "proof", "b16" },
  [0x10] = { "vid", "u32" }, [0x11] = { "caps", "u32" }, [0x12] = { "expiry", "u32" },
  [0x13] = { "ssrc", "u32" }, [0x14] = { "floor_ssrc", "u32" }, [0x15] = { "call_id", "u32" },
  [0x16] = { "seq", "u32" }, [0x17] = { "agreement", "u32" }, [0x18] = { "grants", "u32" },
  [0x20] = { "keepalive", "u16" }, [0x21] = { "key_id", "u16" }, [0x22] = { "cause", "u16" },
  [0x23] = { "retry_after", "u16" }, [0x24] = { "members", "u16" },
  [0x28] = { "status", "u8" }, [0x29] = { "call_type", "u8" }, [0x2A] = { "priority", "u8" },
  [0x2B] = { "action", "u8" }, [0x2C] = { "count", "u8" },
  [0x30] = { "affiliation", "affiliation" }, [0x31] = { "result", "result" },
  [0x32] = { "vector", "vector" }, [0x33] = { "resync", "resync" }, [0x34] = { "location", "location" },
  [0x35] = { "addr", "addr" }, [0x38] = { "text", "text" },
}
local TLV_NAMES = {}
for t, spec in pairs(TLVS) do TLV_NAMES[t] = spec[1] end

local F = {
  magic = ProtoField.string("opmob.magic", "Magic"),
  version = ProtoField.uint8("opmob.version", "Version"),
  type = ProtoField.uint8("opmob.type", "Message type", base.HEX, TYPES),
  name = ProtoField.string("opmob.message", "Message"),
  flags = ProtoField.uint8("opmob.flags", "Flags", base.HEX),
  flag_p = ProtoField.bool("opmob.flags.protected", "Protected (P)", 8, nil, 0x01),
  flag_d = ProtoField.bool("opmob.flags.down", "Down (D)", 8, nil, 0x02),
  reserved = ProtoField.uint8("opmob.reserved", "Reserved", base.HEX),
  body_len = ProtoField.uint16("opmob.body_len", "Body length"),
  txid = ProtoField.uint32("opmob.txid", "Transaction id", base.HEX),
  session = ProtoField.uint32("opmob.session", "Session", base.HEX),
  ciphertext = ProtoField.bytes("opmob.ciphertext", "Body (encrypted)"),
  tag = ProtoField.bytes("opmob.tag", "Tag (HMAC-SHA256, 128 bits)"),
  tlv = ProtoField.uint8("opmob.tlv.type", "TLV type", base.HEX, TLV_NAMES),
  tlv_len = ProtoField.uint16("opmob.tlv.length", "TLV length"),
  unknown = ProtoField.bytes("opmob.unknown", "Unknown field (skipped)"),
  aff_priority = ProtoField.uint8("opmob.affiliation.priority", "Priority"),
  aff_flags = ProtoField.uint8("opmob.affiliation.flags", "Flags", base.HEX),
  aff_scan = ProtoField.bool("opmob.affiliation.scan", "Scan", 8, nil, 0x01),
  aff_selected = ProtoField.bool("opmob.affiliation.selected", "Selected", 8, nil, 0x02),
  aff_group = ProtoField.string("opmob.affiliation.group", "Group"),
  res_code = ProtoField.uint8("opmob.result.code", "Result", base.DEC, RESULTS),
  res_group = ProtoField.string("opmob.result.group", "Group"),
  vec_vid = ProtoField.uint32("opmob.vector.vid", "vid"),
  vec_rand = ProtoField.bytes("opmob.vector.rand", "RAND"),
  vec_xres = ProtoField.bytes("opmob.vector.xres", "XRES"),
  vec_ks = ProtoField.bytes("opmob.vector.ks", "KS"),
  vec_autn = ProtoField.bytes("opmob.vector.autn", "AUTN"),
  rs_rand = ProtoField.bytes("opmob.resync.rand", "RAND"),
  rs_vid = ProtoField.uint32("opmob.resync.vid", "Device's highest vid"),
  rs_auts = ProtoField.bytes("opmob.resync.auts", "AUTS"),
  loc_lat = ProtoField.int32("opmob.location.lat", "Latitude (1e-7 degree)"),
  loc_lon = ProtoField.int32("opmob.location.lon", "Longitude (1e-7 degree)"),
  loc_acc = ProtoField.uint16("opmob.location.accuracy", "Accuracy (m, 65535 unknown)"),
  loc_age = ProtoField.uint16("opmob.location.age", "Fix age (s)"),
  addr_port = ProtoField.uint16("opmob.addr.port", "Port"),
  addr_ipv4 = ProtoField.ipv4("opmob.addr.ipv4", "IPv4 address"),
  addr_ipv6 = ProtoField.ipv6("opmob.addr.ipv6", "IPv6 address"),
  text = ProtoField.string("opmob.text", "Text"),
}
local VALUES = { cause = CAUSES, call_type = CALL_TYPES, action = ACTIONS, status = STATUSES }
for _, spec in pairs(TLVS) do
  local name, kind = spec[1], spec[2]
  local abbr = "opmob." .. name
  if kind == "id" then
    F[name] = ProtoField.string(abbr, name)
  elseif kind == "b16" then
    F[name] = ProtoField.bytes(abbr, name)
  elseif kind == "u32" then
    F[name] = ProtoField.uint32(abbr, name, (name == "caps" or name == "grants" or name:find("ssrc")) and base.HEX or base.DEC)
  elseif kind == "u16" then
    F[name] = ProtoField.uint16(abbr, name, base.DEC, VALUES[name])
  elseif kind == "u8" then
    F[name] = ProtoField.uint8(abbr, name, base.DEC, VALUES[name])
  end
end
local fields = {}
for _, f in pairs(F) do fields[#fields + 1] = f end
opmob.fields = fields

local E = {
  truncated = ProtoExpert.new("opmob.truncated", "Truncated", expert.group.MALFORMED, expert.severity.ERROR),
  bad_length = ProtoExpert.new("opmob.bad_length", "Field of a wrong length", expert.group.MALFORMED, expert.severity.ERROR),
  protected = ProtoExpert.new("opmob.protected", "Protected body: keys needed (opmob pcap decrypt)", expert.group.SECURITY, expert.severity.CHAT),
}
opmob.experts = { E.truncated, E.bad_length, E.protected }

local LENGTHS = { b16 = 16, u32 = 4, u16 = 2, u8 = 1, vector = 68, resync = 36, location = 12 }

local function field(tree, tvb, t, r, info)
  local spec = TLVS[t]
  if spec == nil then
    tree:add(F.unknown, r)
    return
  end
  local name, kind = spec[1], spec[2]
  local len = r:len()
  if LENGTHS[kind] ~= nil and len ~= LENGTHS[kind] then
    tree:add_proto_expert_info(E.bad_length, name .. ": " .. len .. " bytes, expected " .. LENGTHS[kind])
    return
  end
  if kind == "id" then
    tree:add(F[name], r)
    info[#info + 1] = name .. "=" .. r:string()
  elseif kind == "b16" then
    tree:add(F[name], r)
  elseif kind == "u32" or kind == "u16" or kind == "u8" then
    tree:add(F[name], r)
    local v = r:uint()
    local names = VALUES[name]
    info[#info + 1] = name .. "=" .. ((names and names[v]) or tostring(v))
  elseif kind == "affiliation" then
    if len < 5 then return tree:add_proto_expert_info(E.bad_length, "affiliation: " .. len .. " bytes") end
    local st = tree:add(opmob, r, "Affiliation: " .. r:range(2):string())
    st:add(F.aff_priority, r:range(0, 1))
    local fl = st:add(F.aff_flags, r:range(1, 1))
    fl:add(F.aff_scan, r:range(1, 1))
    fl:add(F.aff_selected, r:range(1, 1))
    st:add(F.aff_group, r:range(2))
  elseif kind == "result" then
    if len < 4 then return tree:add_proto_expert_info(E.bad_length, "result: " .. len .. " bytes") end
    local code = r:range(0, 1):uint()
    local st = tree:add(opmob, r, "Result: " .. r:range(1):string() .. " " .. (RESULTS[code] or tostring(code)))
    st:add(F.res_code, r:range(0, 1))
    st:add(F.res_group, r:range(1))
  elseif kind == "vector" then
    local st = tree:add(opmob, r, "Vector")
    st:add(F.vec_vid, r:range(0, 4))
    st:add(F.vec_rand, r:range(4, 16))
    st:add(F.vec_xres, r:range(20, 16))
    st:add(F.vec_ks, r:range(36, 16))
    st:add(F.vec_autn, r:range(52, 16))
  elseif kind == "resync" then
    local st = tree:add(opmob, r, "Resync")
    st:add(F.rs_rand, r:range(0, 16))
    st:add(F.rs_vid, r:range(16, 4))
    st:add(F.rs_auts, r:range(20, 16))
  elseif kind == "location" then
    local lat, lon = r:range(0, 4):int(), r:range(4, 4):int()
    local st = tree:add(opmob, r, string.format("Location: %.7f, %.7f", lat / 1e7, lon / 1e7))
    st:add(F.loc_lat, r:range(0, 4))
    st:add(F.loc_lon, r:range(4, 4))
    st:add(F.loc_acc, r:range(8, 2))
    st:add(F.loc_age, r:range(10, 2))
  elseif kind == "addr" then
    if len ~= 6 and len ~= 18 then return tree:add_proto_expert_info(E.bad_length, "addr: " .. len .. " bytes") end
    local st = tree:add(opmob, r, "Address")
    st:add(F.addr_port, r:range(0, 2))
    st:add(len == 6 and F.addr_ipv4 or F.addr_ipv6, r:range(2))
  elseif kind == "text" then
    tree:add(F.text, r)
  end
end

local function dissect(tvb, pinfo, root)
  local n = tvb:len()
  pinfo.cols.protocol:set("OpMob")
  local t = tvb(3, 1):uint()
  local flags = tvb(4, 1):uint()
  local protected = bit.band(flags, 1) == 1
  local body_len = tvb(6, 2):uint()
  local name = TYPES[t] or string.format("unknown type 0x%02x", t)
  local tree = root:add(opmob, tvb(), "OpMob signalling, " .. name)
  tree:add(F.magic, tvb(0, 2))
  tree:add(F.version, tvb(2, 1))
  tree:add(F.type, tvb(3, 1))
  tree:add(F.name, tvb(3, 1), name)
  local ft = tree:add(F.flags, tvb(4, 1))
  ft:add(F.flag_p, tvb(4, 1))
  ft:add(F.flag_d, tvb(4, 1))
  tree:add(F.reserved, tvb(5, 1))
  tree:add(F.body_len, tvb(6, 2))
  tree:add(F.txid, tvb(8, 4))
  tree:add(F.session, tvb(12, 4))
  local info = { name }
  local want = 16 + body_len + (protected and 16 or 0)
  if n < want then
    tree:add_proto_expert_info(E.truncated, "message of " .. n .. " bytes, its header says " .. want)
    pinfo.cols.info:set(table.concat(info, " "))
    return n
  end
  if protected then
    if body_len > 0 then tree:add(F.ciphertext, tvb(16, body_len)) end
    tree:add(F.tag, tvb(16 + body_len, 16))
    tree:add_proto_expert_info(E.protected)
    info[#info + 1] = "(protected)"
  else
    local off, stop = 16, 16 + body_len
    while off < stop do
      if off + 2 > stop then
        tree:add_proto_expert_info(E.truncated, "TLV header runs past the body")
        break
      end
      local typ = tvb(off, 1):uint()
      local hl, len = 2, tvb(off + 1, 1):uint()
      if typ >= 0xC0 then
        if off + 3 > stop then
          tree:add_proto_expert_info(E.truncated, "TLV header runs past the body")
          break
        end
        hl, len = 3, tvb(off + 1, 2):uint()
      end
      if off + hl + len > stop then
        tree:add_proto_expert_info(E.truncated, "TLV runs past the body")
        break
      end
      local spec = TLVS[typ]
      local label = spec and spec[1] or string.format("unknown 0x%02x", typ)
      local st = tree:add(opmob, tvb(off, hl + len), "Field " .. label)
      st:add(F.tlv, tvb(off, 1))
      st:add(F.tlv_len, tvb(off + 1, hl - 1))
      if len > 0 then
        field(st, tvb, typ, tvb(off + hl, len), info)
      elseif spec ~= nil and spec[2] == "text" then
        st:add(F.text, tvb(off + hl, 0))
      end
      off = off + hl + len
    end
  end
  pinfo.cols.info:set(table.concat(info, " ") .. string.format(" txid=0x%08x session=0x%08x", tvb(8, 4):uint(), tvb(12, 4):uint()))
  return n
end

function opmob.dissector(tvb, pinfo, tree)
  if tvb:len() < 16 then return 0 end
  return dissect(tvb, pinfo, tree)
end

-- Voice and floor control share the relay's port with signalling (RFC 7983 demultiplexing by the
-- first byte). Once signalling has shown which ports are OpMob's, the RTP and RTCP datagrams on
-- them go to Wireshark's RTP and RTCP dissectors: plain ones (opmob pcap decrypt) show every
-- RTP and MCPT floor field; SRTCP (an index and a tag after the RTCP packets) is only labelled.
opmob.prefs.media = Pref.bool("Decode RTP/RTCP on OpMob ports", true,
  "Hand the RTP and RTCP datagrams on ports that carried OpMob signalling to the RTP and RTCP dissectors")
local rtp, rtcp = Dissector.get("rtp"), Dissector.get("rtcp")
local ports = {}
function opmob.init() ports = {} end  -- each capture learns its own ports

local function plain_rtcp(tvb)
  -- A compound RTCP packet fills its datagram exactly; SRTCP has 4 + 10 bytes more.
  local off, n = 0, tvb:len()
  while off + 4 <= n do
    if bit.rshift(tvb(off, 1):uint(), 6) ~= 2 then return false end
    off = off + 4 * (tvb(off + 2, 2):uint() + 1)
  end
  return off == n
end

local function heuristic(tvb, pinfo, tree)
  local n = tvb:len()
  if n >= 16 and tvb(0, 2):uint() == 0x4F4D and tvb(2, 1):uint() == 1 then
    ports[pinfo.src_port] = true
    ports[pinfo.dst_port] = true
    dissect(tvb, pinfo, tree)
    return true
  end
  if not opmob.prefs.media or n < 8 or bit.rshift(tvb(0, 1):uint(), 6) ~= 2 then return false end
  if not (ports[pinfo.src_port] or ports[pinfo.dst_port]) then return false end
  local pt = tvb(1, 1):uint()
  if pt >= 192 and pt <= 223 then
    if plain_rtcp(tvb) then
      rtcp:call(tvb, pinfo, tree)
    else
      pinfo.cols.protocol:set("SRTCP")
      pinfo.cols.info:set("SRTCP (encrypted floor control: opmob pcap decrypt opens it)")
      tree:add(opmob, tvb(), "SRTCP, encrypted")
    end
  elseif n >= 12 then
    rtp:call(tvb, pinfo, tree)
  else
    return false
  end
  return true
end

opmob:register_heuristic("udp", heuristic)
