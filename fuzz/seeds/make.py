#!/usr/bin/env python3
"""Writes the seed corpora of siplb's fuzz targets into fuzz/corpus/<target>/.

wire:   real SIP — what sipp sends and answers with tests/sipp's scenarios (captured with
        -trace_msg, kept in seeds/sipp.log), RFC 4475 torture messages (tests/torture), and
        Lync-shaped REGISTER / SUBSCRIBE / SERVICE / BENOTIFY with NTLM and Kerberos
        Authorization, compact forms, IPv6 hosts, folded headers, several Vias on a line,
        Routes, responses.
framer: the same messages as stream bytes: back to back, with CRLF keep-alives between them,
        preceded by a piece-length prefix (see fuzz_targets/framer.rs).
config: config.toml and the configs of siplb's tests.

Run from the repository root: python3 fuzz/seeds/make.py (then `cargo fuzz cmin` each target).
"""
import hashlib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def crlf(text):
    return text.strip("\n").replace("\r\n", "\n").replace("\n", "\r\n").encode() + b"\r\n"


def msg(text, body=""):
    """A message with CRLF lines, a blank line and `body`; Content-Length filled in."""
    head = text.strip("\n").replace("{len}", str(len(body.encode())))
    return crlf(head) + b"\r\n" + body.encode()


def write(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


NTLM = ('Authorization: NTLM qop="auth", realm="SIP Communications Service", '
        'opaque="C1D2E3F4", targetname="fe1-a.contoso.com", crand="1a2b3c4d", cnum="1", '
        'response="0100000000000000a1b2c3d4e5f60708"')
KERBEROS = ('Proxy-Authorization: Kerberos qop="auth", realm="SIP Communications Service", '
            'opaque="9A8B7C6D", targetname="sip/fe1-a.contoso.com", crand="5e6f7081", cnum="2", '
            'response="0200000000000000ffeeddccbbaa9988"')
NTLM_START = ('Authorization: NTLM qop="auth", realm="SIP Communications Service", '
              'targetname="fe1-a.contoso.com", gssapi-data="TlRMTVNTUAABAAAAt4II4gAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==", version=4')
UA = "User-Agent: UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)"
CONTACT = ('Contact: <sip:192.0.2.7:50123;transport=tls;ms-opaque=d3470f2e1d>;methods="INVITE, MESSAGE, '
           'INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY";proxy=replace;'
           '+sip.instance="<urn:uuid:6f1e1d52-5a3b-5c2d-9e1f-0a1b2c3d4e5f>"')
SUPPORTED = "Supported: gruu-10, adhoclist, msrtc-event-categories\r\nSupported: ms-forking"

LYNC = [
    msg(f"""
REGISTER sip:contoso.com SIP/2.0
Via: SIP/2.0/TLS 192.0.2.7:50123
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=5fb3e1c2a1;epid=01010101
To: <sip:alice@contoso.com>
Call-ID: 9d5e2f0c4b1a4c3e8f7a6b5c4d3e2f1a
CSeq: 1 REGISTER
{CONTACT}
{UA}
{SUPPORTED}
ms-keep-alive: UAS; tcp=no; hop-hop=yes; end-end=no; timeout=300
Event: registration
Content-Length: {{len}}
"""),
    msg(f"""
REGISTER sip:contoso.com SIP/2.0
Via: SIP/2.0/TLS 192.0.2.7:50123;branch=z9hG4bK7c1e;ms-received-port=50123;ms-received-cid=1A00
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=5fb3e1c2a1;epid=01010101
To: <sip:alice@contoso.com>
Call-ID: 9d5e2f0c4b1a4c3e8f7a6b5c4d3e2f1a
CSeq: 2 REGISTER
{CONTACT}
{UA}
Supported: gruu-10, adhoclist, msrtc-event-categories, path
{NTLM_START}
Content-Length: {{len}}
"""),
    msg(f"""
REGISTER sip:contoso.com SIP/2.0
Via: SIP/2.0/TLS 192.0.2.7:50123;branch=z9hG4bK7c1f;rport
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=5fb3e1c2a1;epid=01010101
To: <sip:alice@contoso.com>
Call-ID: 9d5e2f0c4b1a4c3e8f7a6b5c4d3e2f1a
CSeq: 3 REGISTER
{CONTACT}
{UA}
{NTLM}
Expires: 3600
Content-Length: {{len}}
"""),
    msg(f"""
REGISTER sip:adatum.com SIP/2.0
Via: SIP/2.0/TCP [2001:db8::7]:50200;branch=z9hG4bKk3rb;rport
Max-Forwards: 70
From: <sip:bob@adatum.com>;tag=77aa;epid=0202
To: <sip:bob@adatum.com>
Call-ID: kerb-1@[2001:db8::7]
CSeq: 4 REGISTER
Contact: <sip:[2001:db8::7]:50200;transport=tcp;ob>;+sip.instance="<urn:uuid:1>"
{UA}
{KERBEROS}
Content-Length: {{len}}
"""),
    msg(f"""
SUBSCRIBE sip:alice@contoso.com SIP/2.0
Via: SIP/2.0/TLS 192.0.2.7:50123;branch=z9hG4bKsub1;rport
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=a1s;epid=01010101
To: <sip:alice@contoso.com>
Call-ID: sub-roaming-1
CSeq: 1 SUBSCRIBE
{CONTACT}
Event: vnd-microsoft-roaming-contacts
Accept: application/vnd-microsoft-roaming-contacts+xml
Supported: com.microsoft.autoextend, ms-benotify, ms-piggyback-first-notify
Proxy-Require: ms-benotify
Require: adhoclist, categoryList
{UA}
{NTLM}
Content-Type: application/msrtc-adrl-categorylist+xml
Content-Length: {{len}}
""", '<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="sip:alice@contoso.com" name=""><action name="subscribe" id="63792024"><adhocList><resource uri="sip:bob@contoso.com"/></adhocList></action></batchSub>'),
    msg(f"""
SERVICE sip:alice@contoso.com;gruu;opaque=app:conf:focusfactory SIP/2.0
v: SIP/2.0/TLS 192.0.2.7:50123;branch=z9hG4bKsvc1
Max-Forwards: 70
f: <sip:alice@contoso.com>;tag=a1v;epid=01010101
t: <sip:alice@contoso.com;gruu;opaque=app:conf:focusfactory>
i: svc-1
CSeq: 1 SERVICE
m: <sip:alice@contoso.com;opaque=user:epid:abc;gruu>
{UA}
{KERBEROS}
c: application/cccp+xml
l: {{len}}
""", '<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="sip:alice@contoso.com;gruu;opaque=app:conf:focusfactory" from="sip:alice@contoso.com" requestId="0"><getAvailableMcuTypes /></request>'),
    msg("""
BENOTIFY sip:192.0.2.7:50123;transport=tls;ms-opaque=d3470f2e1d;ms-received-cid=1A00;grid SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5071;branch=z9hG4bKbn1;ms-internal-info="ab"
Authentication-Info: NTLM rspauth="01000000000000005A3F2C0B1D8E9A70", srand="3C4A2B1F", snum="1", opaque="B6D2E1A0", qop="auth", targetname="fe1-a.contoso.com", realm="SIP Communications Service"
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=srv1
To: <sip:alice@contoso.com>;tag=a1s;epid=01010101
Call-ID: sub-roaming-1
CSeq: 2 BENOTIFY
Event: vnd-microsoft-roaming-contacts
subscription-state: active;expires=33271
Content-Type: application/vnd-microsoft-roaming-contacts+xml
Content-Length: {len}
""", '<contactList deltaNum="2"/>'),
    msg(f"""
INVITE sip:+14255550100@contoso.com;user=phone SIP/2.0
Via: SIP/2.0/TLS 192.0.2.7:50123;branch=z9hG4bKinv1
Max-Forwards: 70
From: "Alice" <sip:alice@contoso.com>;tag=inv1;epid=01010101
To: <sip:+14255550100@contoso.com;user=phone>
Call-ID: call-pstn-1
CSeq: 1 INVITE
{CONTACT}
Ms-Conversation-ID: Ac1a2b3c4d
Content-Type: application/sdp
Content-Length: {{len}}
""", "v=0\r\no=- 0 0 IN IP4 192.0.2.7\r\ns=session\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n"),
    msg("""
MESSAGE sip:carol@litwareinc.com SIP/2.0
Via: SIP/2.0/UDP [2001:db8::7]:5099;branch=z9hG4bKmsg1;rport, SIP/2.0/TCP proxy.example.net;branch=z9hG4bKup;received=198.51.100.1
Via:
 SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKfold
Max-Forwards:
 12
From: <sip:alice@contoso.com>;tag=m1
To: <sip:carol@litwareinc.com>
Call-ID: msg-1
CSeq: 7 MESSAGE
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5072;lr>
Route: <sip:fe2-a;lr>
Content-Type: text/plain
Content-Length: {len}
""", "hello"),
    msg("""
ACK sip:bob@contoso.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bKinv2
Route: <sip:127.0.0.1:5060;lr>
Max-Forwards: 0
From: <sip:alice@contoso.com>;tag=a
To: <sip:bob@contoso.com>;tag=b
Call-ID: ack-1
CSeq: 1 ACK
Content-Length: 0
"""),
    msg("""
OPTIONS sips:fe.contoso.com SIP/2.0
Via: SIP/2.0/TLS 192.0.2.7:5061;branch=z9hG4bKopt;received=198.51.100.9;rport=5061
From: <sips:probe@contoso.com>;tag=o
To: <sips:fe.contoso.com>
Call-ID: opt-1
CSeq: 9 OPTIONS
Proxy-Require: foo, ms-benotify
Content-Length: 0
"""),
    msg("""
SIP/2.0 401 Unauthorized
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-lb0123456789abcdef, SIP/2.0/TLS 192.0.2.7:50123;branch=z9hG4bK7c1e;received=192.0.2.7;ms-received-port=50123
From: <sip:alice@contoso.com>;tag=5fb3e1c2a1;epid=01010101
To: <sip:alice@contoso.com>;tag=srv401
Call-ID: 9d5e2f0c4b1a4c3e8f7a6b5c4d3e2f1a
CSeq: 2 REGISTER
WWW-Authenticate: NTLM realm="SIP Communications Service", targetname="fe1-a.contoso.com", version=4
WWW-Authenticate: Kerberos realm="SIP Communications Service", targetname="sip/fe1-a.contoso.com", version=4
Content-Length: 0
"""),
    msg("""
SIP/2.0 301 Redirect request to Home Server
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-lb00aa11bb22cc33dd
Via: SIP/2.0/UDP [2001:db8::7]:5099;branch=z9hG4bKr;rport=5099;received=2001:db8::7
From: <sip:bob@adatum.com>;tag=77aa
To: <sip:bob@adatum.com>;tag=dir
Call-ID: kerb-1
CSeq: 4 REGISTER
Contact: <sip:fe1-a.contoso.com:5061;transport=TLS>;q=0.7
Contact: <sip:fe2-a.contoso.com:5061;transport=TLS>;q=0.3
Content-Length: 0
"""),
    msg("""
SIP/2.0 503 Service Unavailable
v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-lbffffffffffffffff
Retry-After: 30
f: <sip:a@contoso.com>;tag=1
t: <sip:a@contoso.com>;tag=2
i: x
CSeq: 1 INVITE
l: 0
"""),
]


def sipp_messages():
    """What sipp sent and received in seeds/sipp.log (LF lines there; CRLF on the wire)."""
    with open(os.path.join(ROOT, "fuzz", "seeds", "sipp.log")) as f:
        log = f.read()
    for block in re.split(r"^-{10,}.*$", log, flags=re.M):
        lines = block.strip("\n").split("\n")
        if len(lines) < 3:
            continue
        text = "\n".join(lines[2:]).strip("\n")
        yield crlf(text) + b"\r\n"


def torture():
    d = os.path.join(ROOT, "tests", "torture")
    for sub in sorted(os.listdir(d)):
        for name in sorted(os.listdir(os.path.join(d, sub))):
            with open(os.path.join(d, sub, name), "rb") as f:
                yield f.read()


def configs():
    yield open(os.path.join(ROOT, "config.toml"), "rb").read()
    for path in ["proxy/src/core/tests.rs", "proxy/src/core/tests_streams.rs",
                 "proxy/src/config/validate/tests.rs", "proxy/src/health/tests.rs"]:
        text = open(os.path.join(ROOT, path)).read()
        for m in re.finditer(r'r#"\n?(\[[a-z].*?)"#', text, flags=re.S):
            yield m.group(1).encode()
    d = os.path.join(ROOT, "proxy", "src", "config", "validate", "tests")
    for name in sorted(os.listdir(d)):
        text = open(os.path.join(d, name)).read()
        for m in re.finditer(r'r#"\n?(\[[a-z].*?)"#', text, flags=re.S):
            yield m.group(1).encode()


def main():
    wire = list(sipp_messages()) + LYNC + list(torture())
    for m in wire:
        write("wire", m)
    # framer: k=3 piece lengths (1, 7, 0 = a rest), limits, then a stream.
    prefix = bytes([3, 1, 7, 0, 120, 200])
    whole = bytes([0, 255, 255])
    stream = b"".join(m for m in wire[:6] if b"Content-Length" in m or b"\r\nl:" in m)
    write("framer", whole + stream)
    write("framer", prefix + b"\r\n\r\n".join(LYNC[:3]) + b"\r\n\r\n\r\n")
    write("framer", bytes([1, 13, 40, 4]) + LYNC[4] + LYNC[5] + b"\r\n" + LYNC[6])
    write("framer", whole + LYNC[0].replace(b"Content-Length: 0", b"Content-Length: 99999"))
    for c in configs():
        write("config", c)


if __name__ == "__main__":
    sys.exit(main())
