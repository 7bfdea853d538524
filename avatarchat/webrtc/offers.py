"""Checks of an SDP offer before a session holds a place for it: refused (BadOffer) with a reason
the sender can act on when aiortc cannot read it or it could never connect."""

from __future__ import annotations

import logging

from aiortc import sdp as aiortc_sdp
from aiortc.codecs import CODECS
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS
from aiortc.rtcpeerconnection import find_common_codecs

log = logging.getLogger("ray.serve")


class BadOffer(ValueError):
    """The offer cannot be answered; ``str()`` is the reason."""


# The reason given when aiortc fails on an offer that check_offer let through (the error is logged).
UNANSWERABLE = ("unusable SDP offer: the server could not answer it; send the offer exactly as "
                "RTCPeerConnection.createOffer() made it (one m= section per track, each with its own a=mid)")


def check_offer(sdp: str) -> None:
    """Refuse, before a session holds a place, an offer that aiortc cannot read or that could
    never connect, with a reason the sender can act on (BadOffer). aiortc itself accepts an offer
    without a fingerprint, with no codec in common or with a BUNDLE naming no section, and fails
    later: the session holds its place until connect_timeout_s, or the error is internal."""
    lines = [line.strip() for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise BadOffer("not an SDP offer: it must start with 'v=0'")
    if not any(line.startswith("m=audio") for line in lines):
        raise BadOffer("the offer has no audio section: send one microphone track")
    description = _parse(sdp)
    _, sections = aiortc_sdp.grouplines(sdp)
    mids: list[str] = []
    live_audio = False
    for i, (media, raw) in enumerate(zip(description.media, sections), 1):
        name = f"the offer's m={media.kind} section (#{i})"
        _check_section(name, media, description)
        if media.rtp.muxId in mids:
            raise BadOffer(f"{name} repeats a=mid:{media.rtp.muxId}: each m= section needs its own")
        mids.append(media.rtp.muxId)
        # port 0 rejects a section, unless it is bundle-only (it then rides on the BUNDLE's transport)
        live_audio |= media.kind == "audio" and (media.port != 0 or "a=bundle-only" in map(str.strip, raw))
    if not live_audio:
        raise BadOffer("the offer's m=audio section has port 0, which rejects it: send the microphone in "
                       "an active audio section")
    for group in description.group:
        for mid in group.items if group.semantic == "BUNDLE" else ():
            if str(mid) not in mids:
                raise BadOffer(f"a=group:BUNDLE names mid {mid!r}, which no m= section has")


def _check_section(name: str, media: aiortc_sdp.MediaDescription,
                   description: aiortc_sdp.SessionDescription) -> None:
    """What one m= section needs for aiortc to answer it and for ICE and DTLS to connect."""
    if media.kind not in ("audio", "video", "application"):
        raise BadOffer(f"{name} is of a kind this server cannot answer: send audio, video and "
                       f"application (data channel) sections only")
    if media.host is None and description.host is None:
        raise BadOffer(f"{name} has no c= line, nor has the session: add one, e.g. 'c=IN IP4 0.0.0.0'")
    for attr, value in (("a=ice-ufrag", media.ice.usernameFragment), ("a=ice-pwd", media.ice.password)):
        if not value:
            raise BadOffer(f"{name} has no {attr} (at media or session level): ICE needs it")
    if media.dtls is None:
        raise BadOffer(f"{name} has no a=setup (at media or session level): DTLS needs it; an offer "
                       f"sends 'a=setup:actpass'")
    algorithms = sorted({f.algorithm.lower() for f in media.dtls.fingerprints})
    if not set(algorithms) & set(X509_DIGEST_ALGORITHMS):
        has = f" (it has {', '.join(algorithms)} only)" if algorithms else ""
        raise BadOffer(f"{name} has no a=fingerprint of {', '.join(X509_DIGEST_ALGORITHMS)}{has}: "
                       f"DTLS cannot check the client's certificate without one")
    if not media.rtp.muxId:
        raise BadOffer(f"{name} has no a=mid: each m= section needs its own")
    if media.kind in CODECS:
        if media.direction is None:  # SDP's default, sendrecv, is not aiortc's: it fails on none
            raise BadOffer(f"{name} has no direction: add a=sendrecv (or a=sendonly, a=recvonly, "
                           f"a=inactive)")
        if not media.rtcp_mux:
            raise BadOffer(f"{name} has no a=rtcp-mux: this server sends RTP and RTCP on one port")
        _check_codecs(name, media)
        if media.msid is not None and " " in media.msid and len(media.msid.split()) == 1:
            raise BadOffer(f"{name}'s a=msid has no track id: write 'a=msid:<stream id> <track id>'")
    if media.kind == "application" and media.sctp_port is None and not (
            media.profile == "DTLS/SCTP" and str(media.fmt[0]).isdigit()):
        raise BadOffer(f"{name} has no a=sctp-port: the data channels need it")


def _check_codecs(name: str, media: aiortc_sdp.MediaDescription) -> None:
    """A codec in common with this server, and none whose a=fmtp aiortc cannot compare."""
    local = CODECS[media.kind]
    try:
        common = find_common_codecs(local, media.rtp.codecs)
    except (TypeError, ValueError, KeyError):  # e.g. "packetization-mode" without a value
        for codec in media.rtp.codecs:
            try:
                find_common_codecs(local, [codec])
            except (TypeError, ValueError, KeyError):
                raise BadOffer(f"{name} has an a=fmtp:{codec.payloadType} that cannot be read "
                               f"({codec.mimeType}); give each parameter its value") from None
        raise BadOffer(f"{name} has a=fmtp lines that cannot be read") from None
    if not common:
        ours = sorted({c.mimeType.split("/")[1] for c in local} - {"rtx"})
        raise BadOffer(f"{name} offers no codec this server speaks ({', '.join(ours)})")


def _parse(sdp: str) -> aiortc_sdp.SessionDescription:
    try:
        return aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as err:  # noqa: BLE001 - its parser asserts, indexes and int()s what it reads
        n, line = _first_unparsable_line(sdp)
        shown = line if len(line) <= 80 else f"{line[:77]}..."
        log.warning("offer refused: aiortc could not parse its line %d %r: %r", n, shown, err)
        raise BadOffer(f"unusable SDP offer: could not parse line {n}: {shown!r}") from None


def _first_unparsable_line(sdp: str) -> tuple[int, str]:
    """(number from 1, text) of the line with which aiortc's parser starts to fail: the offer's
    first lines are parsed by bisection (a dozen parses for the largest offer accepted)."""
    lines = sdp.splitlines()
    good, bad = 0, len(lines)  # the first ``good`` lines parse, the first ``bad`` do not
    while bad - good > 1:
        mid = (good + bad) // 2
        try:
            aiortc_sdp.SessionDescription.parse("\r\n".join(lines[:mid]))
            good = mid
        except Exception:  # noqa: BLE001
            bad = mid
    return bad, lines[bad - 1]
