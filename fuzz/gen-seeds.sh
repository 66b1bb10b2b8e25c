#!/usr/bin/env bash
# Writes the seed corpora under fuzz/seeds/ from the test vectors of OAP/1 section 5
# (spec/OAP1.md), plus hand-made frames for the paths the vectors do not reach.
# The seeds are committed; rerun this only when the vectors or an input layout change.
# Input layouts are described at the top of each fuzz_targets/*.rs.
set -euo pipefail
cd "$(dirname "$0")"

HELLO=00000070000100090000000000000000000000000000000000000000000000000000000000017b2276657273696f6e73223a5b315d2c226e6f6465223a226e31222c22726f6c65223a2270656572222c226d61785f6672616d65223a313034383537362c22746f70696373223a5b5d7d
HELLO_OK=000000610001000a00c8000000000000000000000000000000000000000000000000000000017b2276657273696f6e223a312c226e6f6465223a226e32222c226d61785f6672616d65223a313034383537362c226368756e6b223a36353533367d
GOSSIP=0000003e0001001c000000010000000000000000000000000000000000000000000000000007000102030405060708090a0b0c0d0e0f0304666565646869
PING=0000002f0001000400000002000000000000000000000000000000000000000000000000000901000000000000002a

# Flag bits (spec section 1).
REQ=1 RESP=2 EVENT=4 START=8 END=16 ACK_REQ=32 COMP=64

hexstr() { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }
hexlen() { echo $((${#1} / 2)); }
u16() { printf '%04x' "$1"; }

# frame FLAGS CODE APP_PROTO CORR_ID PAYLOAD_HEX [CAP_HEX] -> one frame, tenant 0, in hex
frame() {
    local cap=${6:-}
    printf '%08x0001%04x%04x%04x%032x%04x%016x%s%s' \
        $((38 + $(hexlen "$cap") + $(hexlen "$5"))) "$1" "$2" "$3" 0 "$(hexlen "$cap")" "$4" "$cap" "$5"
}

# write FILE HEX...: the concatenated hex as raw bytes
write() {
    local file=$1
    shift
    local hex
    hex=$(printf '%s' "$@")
    mkdir -p "$(dirname "$file")"
    printf '%b' "$(sed 's/../\\x&/g' <<<"$hex")" >"$file"
    [[ $(wc -c <"$file") -eq $(hexlen "$hex") ]] || { echo "bad length: $file" >&2; exit 1; }
}

# The builder must reproduce the vectors byte for byte, or every seed below is suspect.
check() { [[ $1 == "$2" ]] || { echo "frame() disagrees with vector $3" >&2; exit 1; }; }
check "$(frame $((REQ | START)) 0 0 1 "$(hexstr '{"versions":[1],"node":"n1","role":"peer","max_frame":1048576,"topics":[]}')")" $HELLO HELLO
check "$(frame $((RESP | START)) 200 0 1 "$(hexstr '{"version":1,"node":"n2","max_frame":1048576,"chunk":65536}')")" $HELLO_OK HELLO_OK
check "$(frame $((EVENT | START | END)) 0 1 7 000102030405060708090a0b0c0d0e0f0304666565646869)" $GOSSIP GOSSIP
check "$(frame $EVENT 0 2 9 01000000000000002a)" $PING PING

# A three-chunk gossip message (chunk_bytes 64): msg_id 10..1f, ttl 3, topic "feed",
# 150 data bytes 00..95; 42 data bytes after the 22-byte header, then 64, then 44.
DATA=$(for i in $(seq 0 149); do printf '%02x' $((i % 256)); done)
HEAD=101112131415161718191a1b1c1d1e1f0304$(hexstr feed)
C1=$HEAD${DATA:0:84}
C2=${DATA:84:128}
C3=${DATA:212:88}
MULTI=$(frame $((EVENT | START)) 0 1 11 "$C1")$(frame $EVENT 0 1 11 "$C2")$(frame $((EVENT | END | ACK_REQ)) 0 1 11 "$C3")
SESSION=$HELLO$HELLO_OK$GOSSIP$PING

# zstd frames built by hand (magic, frame header, one block) to reach each COMP rule.
ZMAGIC=28b52ffd
Z_HELLO=${ZMAGIC}2005290000$(hexstr hello)   # single segment, size 5, raw block
Z_DECLARED_BOMB=${ZMAGIC}a0a086010003350c61  # declares 100000 bytes: an RLE block of 'a'
Z_STREAMED_BOMB=${ZMAGIC}003803350c61        # the same, no declared size, 128 KiB window
Z_WIDE_WINDOW=${ZMAGIC}007053000061          # asks for a 16 MiB window (log 24): proto
Z_GARBAGE=$(hexstr 'not zstd at all')

# A 42-byte frame with header field overrides, for the header rules.
hdr() { # VER FLAGS CAP_LEN
    printf '0000002a%04x%04x0000000100000000000000000000000000000005%04x000000000000004d61626364' "$1" "$2" "$3"
}

D=seeds/frame_decoder
rm -rf "$D" seeds/chunk_reassembly
# Control byte 00: default limits, everything in one piece.
write $D/vector_hello 00 $HELLO
write $D/vector_hello_ok 00 $HELLO_OK
write $D/vector_gossip 00 $GOSSIP
write $D/vector_ping 00 $PING
write $D/vector_prefix_37_proto 00 00000025
write $D/vector_prefix_1048577_oversize 00 00100001
write $D/vector_prefix_0_proto 00 00000000
write $D/session_whole 00 $SESSION
# Nine cuts: 1, 3, 34, 50, 2, 0, 40, 200, 5 bytes, then the rest.
write $D/session_split 09 0001 0003 0022 0032 0002 0000 0028 00c8 0005 $SESSION
write $D/session_then_oversize_prefix 00 $SESSION 00100001
write $D/gossip_byte_by_byte 0f 0001 0001 0001 0001 0001 0001 0001 0001 0001 0001 0001 0001 0001 0001 0001 $GOSSIP
write $D/multi_chunk_message 00 $MULTI
write $D/multi_chunk_message_split 03 0026 0040 0066 $MULTI
write $D/header_bad_version 00 "$(hdr 2 $EVENT 0)"
write $D/header_unknown_flag 00 "$(hdr 1 $((EVENT | 0x100)) 0)"
write $D/header_no_kind 00 "$(hdr 1 0 0)"
write $D/header_two_kinds 00 "$(hdr 1 $((REQ | RESP)) 0)"
write $D/header_cap_without_start 00 "$(hdr 1 $EVENT 2)"
write $D/header_cap_too_long 00 "$(hdr 1 $((EVENT | START)) 5)"
write $D/hello_with_cap 00 "$(frame $((REQ | START)) 0 0 1 "${HELLO:76}" "$(hexstr token)")"
write $D/comp_hello 00 "$(frame $((EVENT | COMP)) 0 1 3 $Z_HELLO)"
write $D/comp_declared_bomb_ratio_cap 00 "$(frame $((EVENT | COMP)) 0 1 3 $Z_DECLARED_BOMB)"
write $D/comp_streamed_bomb_ratio_cap 00 "$(frame $((EVENT | COMP)) 0 1 3 $Z_STREAMED_BOMB)"
write $D/comp_wide_window_proto 00 "$(frame $((EVENT | COMP)) 0 1 3 $Z_WIDE_WINDOW)"
write $D/comp_garbage_proto 00 "$(frame $((EVENT | COMP)) 0 1 3 "$Z_GARBAGE")"
write $D/comp_trailing_bytes_proto 00 "$(frame $((EVENT | COMP)) 0 1 3 $Z_HELLO$Z_HELLO)"
# Control byte 10: tight limits (max_frame 512, max_body_bytes 1024, ratio 4).
write $D/tight_session 10 $SESSION
write $D/tight_comp_hello 10 "$(frame $((EVENT | COMP)) 0 1 3 $Z_HELLO)"
write $D/tight_oversize 10 "$(frame $EVENT 0 1 5 "$DATA$DATA$DATA$DATA")"

# chunk_reassembly records: flags (1 START, 2 END, 4 ACK_REQ, 8 REQ), corr, u16 len, payload.
rec() { printf '%02x%02x%04x%s' "$1" "$2" "$(hexlen "$3")" "$3"; }
R=seeds/chunk_reassembly
# Config 3f: 4 streams, max_body_bytes 512, max_buffered_bytes 512.
write $R/vector_gossip_one_frame 3f "$(rec 3 7 "${GOSSIP:76}")"
write $R/vector_gossip_one_frame_ack 3f "$(rec 7 7 "${GOSSIP:76}")"
write $R/vector_hello_not_event 3f "$(rec 9 1 "${HELLO:76}")"
write $R/vector_ping_without_start 3f "$(rec 0 9 "${PING:76}")"
write $R/multi_chunk_message 3f "$(rec 1 11 "$C1")" "$(rec 0 11 "$C2")" "$(rec 6 11 "$C3")"
write $R/interleaved_streams 3f "$(rec 1 11 "$C1")" "$(rec 1 12 "$C1")" "$(rec 0 12 "$C2")" \
    "$(rec 0 11 "$C2")" "$(rec 2 12 "$C3")" "$(rec 6 11 "$C3")"
write $R/duplicate_start 3f "$(rec 1 11 "$C1")" "$(rec 1 11 "$C1")" "$(rec 2 11 "$C3")"
write $R/bad_gossip_header 3f "$(rec 3 4 00010203040506070809)" "$(rec 3 4 "${GOSSIP:76:34}00")"
# Config 3c: one stream at a time.
write $R/too_many_streams 3c "$(rec 1 11 "$C1")" "$(rec 1 12 "$C1")" "$(rec 2 11 "$C2")"
# Config 33: max_body_bytes 64, so the 150-byte message is oversize at its second chunk.
write $R/body_too_large 33 "$(rec 1 11 "$C1")" "$(rec 0 11 "$C2")" "$(rec 6 11 "$C3")"
# Config 0f: max_buffered_bytes 64 with max_body_bytes 512: the second stream does not fit.
write $R/buffer_full 0f "$(rec 1 11 "$C1")" "$(rec 1 12 "$C1")" "$(rec 0 11 "$C2")"
echo "seeds: $(ls $D | wc -l) frame_decoder, $(ls $R | wc -l) chunk_reassembly"
