package stream

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/nats-io/nats.go"
)

// Headers of protocol v2 frames (docs/protocol.md, "Protocol v2"), beside
// the ones every frame carries; Meridian-Seq is then the station's own.
const (
	HeaderEpoch = "Meridian-Epoch" // the station's numbering, decimal
	HeaderAcked = "Meridian-Acked" // every frame of the epoch up to it was stored before this one was read
	HeaderGap   = "Meridian-Gap"   // frames the station lost just before this one
	// HeaderCount marks a message of the packed layout: it carries this
	// many frames of the station, Meridian-Seq and on, each a 4-byte
	// big-endian length and its bytes (docs/protocol.md, "The packed
	// layout").
	HeaderCount = "Meridian-Count"
)

// msgBuilder fills one reusable message. The header map and its value slices
// are reused: PublishMsg serialises them before it returns.
type msgBuilder struct {
	msg                                    nats.Msg
	station, session, seq, received, msgID []string
	subjects                               map[string]string // station → subject
	buf                                    []byte

	// v2 is whether the map holds the protocol v2 headers now; gapSet
	// whether it holds Meridian-Gap.
	v2, gapSet, countSet     bool
	epoch, acked, gap, count []string

	// Ground-framing units (pipeline.Meta set) add headers and a subject
	// token; ground is whether the map holds their headers now, so that a
	// Meridian frame after one goes out exactly as before.
	ground                                   bool
	framing, link, crc                       []string
	apid, seqCount, scid, vcid, mcCnt, vcCnt []string
	sub                                      map[subKey]string // station and token → subject
}

// subKey names a sub-token subject in the cache.
type subKey struct {
	station string
	kind    pipeline.MetaKind
	n       uint16
}

func newMsgBuilder() *msgBuilder {
	mb := &msgBuilder{
		station:  make([]string, 1),
		session:  make([]string, 1),
		seq:      make([]string, 1),
		received: make([]string, 1),
		msgID:    make([]string, 1),
		subjects: make(map[string]string),
		framing:  make([]string, 1),
		link:     make([]string, 1),
		crc:      []string{"bad"},
		apid:     make([]string, 1),
		seqCount: make([]string, 1),
		scid:     make([]string, 1),
		vcid:     make([]string, 1),
		mcCnt:    make([]string, 1),
		vcCnt:    make([]string, 1),
		sub:      make(map[subKey]string),
		epoch:    make([]string, 1),
		acked:    make([]string, 1),
		gap:      make([]string, 1),
		count:    make([]string, 1),
	}
	mb.msg.Header = nats.Header{
		HeaderStation:  mb.station,
		HeaderSession:  mb.session,
		HeaderSeq:      mb.seq,
		HeaderReceived: mb.received,
		HeaderMsgID:    mb.msgID,
	}
	return mb
}

// build fills the message for frame i of b, sent as message id.
func (mb *msgBuilder) build(s *Sink, b *pipeline.Batch, i int, id uint64) *nats.Msg {
	f := &b.Frames[i]
	subj, ok := mb.subjects[f.Station]
	if !ok {
		if len(mb.subjects) >= 4096 {
			clear(mb.subjects) // stations come and go; bound the cache
		}
		subj = Subject(f.Station)
		mb.subjects[f.Station] = subj
	}
	mb.msg.Subject = subj
	mb.msg.Data = f.Payload
	mb.station[0] = f.Station
	mb.session[0] = f.Session
	// The reply subject, Meridian-Seq, Meridian-Received and Nats-Msg-Id are
	// built in one buffer and converted to one string that they slice: one
	// allocation per frame instead of four.
	buf := append(mb.buf[:0], s.prefix...)
	buf = strconv.AppendUint(buf, id, 10)
	endReply := len(buf)
	buf = strconv.AppendUint(buf, f.Seq, 10)
	endSeq := len(buf)
	buf = f.Received.UTC().AppendFormat(buf, time.RFC3339Nano)
	endRecv := len(buf)
	if f.Packed {
		buf = appendMsgIDPacked(buf, f.Station, f.Epoch, f.Seq, f.LastSeq())
	} else if f.Epoch != 0 {
		buf = appendMsgIDv2(buf, f.Station, f.Epoch, f.Seq)
	} else {
		buf = appendMsgID(buf, s.bootID, f.Session, f.Seq)
	}
	endID := len(buf)
	var endEpoch, endAcked, endGap int
	if f.Epoch != 0 {
		buf = strconv.AppendUint(buf, f.Epoch, 10)
		endEpoch = len(buf)
		buf = strconv.AppendUint(buf, f.Acked, 10)
		endAcked = len(buf)
		if f.Gap != 0 {
			buf = strconv.AppendUint(buf, f.Gap, 10)
		}
		endGap = len(buf)
		if f.Packed {
			buf = strconv.AppendUint(buf, uint64(f.Count), 10)
		}
	} else if mb.v2 {
		delete(mb.msg.Header, HeaderEpoch)
		delete(mb.msg.Header, HeaderAcked)
		mb.v2 = false
	}
	if mb.gapSet && f.Gap == 0 {
		delete(mb.msg.Header, HeaderGap)
		mb.gapSet = false
	}
	if mb.countSet && !f.Packed {
		delete(mb.msg.Header, HeaderCount)
		mb.countSet = false
	}
	groundFrom := len(buf)
	if f.Meta.Framing != "" {
		buf = mb.ground1(f, buf)
	} else if mb.ground {
		mb.meridian()
	}
	mb.buf = buf
	all := string(buf)
	mb.msg.Reply = all[:endReply]
	mb.seq[0] = all[endReply:endSeq]
	mb.received[0] = all[endSeq:endRecv]
	mb.msgID[0] = all[endRecv:endID]
	if f.Epoch != 0 {
		h := mb.msg.Header
		if !mb.v2 {
			h[HeaderEpoch], h[HeaderAcked] = mb.epoch, mb.acked
			mb.v2 = true
		}
		mb.epoch[0], mb.acked[0] = all[endID:endEpoch], all[endEpoch:endAcked]
		if f.Gap != 0 {
			h[HeaderGap], mb.gapSet = mb.gap, true
			mb.gap[0] = all[endAcked:endGap]
		}
		if f.Packed {
			h[HeaderCount], mb.countSet = mb.count, true
			mb.count[0] = all[endGap:groundFrom]
		}
	}
	if f.Meta.Framing != "" {
		mb.groundValues(f, all[groundFrom:])
	}
	return &mb.msg
}

// ground1 sets the subject and headers of a ground-framing unit, and appends
// its numeric header values to buf (in the order groundValues slices them).
func (mb *msgBuilder) ground1(f *pipeline.Frame, buf []byte) []byte {
	h := mb.msg.Header
	if !mb.ground {
		h[HeaderFraming], h[HeaderLink] = mb.framing, mb.link
		mb.ground = true
	}
	mb.framing[0], mb.link[0] = f.Meta.Framing, f.Meta.Link
	for _, k := range [...]string{HeaderAPID, HeaderSeqCount, HeaderSCID, HeaderVCID, HeaderMCCount, HeaderVCCount, HeaderCRC} {
		delete(h, k)
	}
	if f.Meta.CRCBad {
		h[HeaderCRC] = mb.crc
	}
	var key subKey
	switch f.Meta.Kind {
	case pipeline.MetaPacket:
		h[HeaderAPID], h[HeaderSeqCount] = mb.apid, mb.seqCount
		buf = strconv.AppendUint(buf, uint64(f.Meta.APID), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(f.Meta.Seq), 10)
		key = subKey{f.Station, pipeline.MetaPacket, f.Meta.APID}
	case pipeline.MetaFrame:
		h[HeaderSCID], h[HeaderVCID], h[HeaderMCCount], h[HeaderVCCount] = mb.scid, mb.vcid, mb.mcCnt, mb.vcCnt
		buf = strconv.AppendUint(buf, uint64(f.Meta.SCID), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(f.Meta.VCID), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(f.Meta.MCCount), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(f.Meta.VCCount), 10)
		key = subKey{f.Station, pipeline.MetaFrame, uint16(f.Meta.VCID)}
	default:
		return buf
	}
	subj, ok := mb.sub[key]
	if !ok {
		if len(mb.sub) >= 4096 {
			clear(mb.sub)
		}
		if key.kind == pipeline.MetaPacket {
			subj = SubjectAPID(f.Station, int(key.n))
		} else {
			subj = SubjectVC(f.Station, int(key.n))
		}
		mb.sub[key] = subj
	}
	mb.msg.Subject = subj
	return buf
}

// groundValues points the numeric headers at their text in vals, which
// ground1 appended separated by spaces.
func (mb *msgBuilder) groundValues(f *pipeline.Frame, vals string) {
	next := func() string {
		v, rest, _ := strings.Cut(vals, " ")
		vals = rest
		return v
	}
	switch f.Meta.Kind {
	case pipeline.MetaPacket:
		mb.apid[0], mb.seqCount[0] = next(), next()
	case pipeline.MetaFrame:
		mb.scid[0], mb.vcid[0], mb.mcCnt[0], mb.vcCnt[0] = next(), next(), next(), next()
	}
}

// meridian removes the ground-framing headers, for a Meridian frame after a
// ground unit.
func (mb *msgBuilder) meridian() {
	for _, k := range [...]string{HeaderFraming, HeaderLink, HeaderAPID, HeaderSeqCount, HeaderSCID, HeaderVCID, HeaderMCCount, HeaderVCCount, HeaderCRC} {
		delete(mb.msg.Header, k)
	}
	mb.ground = false
}

// MsgID is the Nats-Msg-Id of a frame: boot id, session and sequence number,
// separated by '/'. The boot id keeps two runs of the gateway, whose session
// numbers restart, from deduplicating each other's frames.
func MsgID(bootID, session string, seq uint64) string {
	return string(appendMsgID(nil, bootID, session, seq))
}

// MsgIDv2 is the Nats-Msg-Id of a protocol v2 frame: the station's
// identity, epoch and own sequence number. Any session of the station, on
// any gateway, gives a frame the same id, so JetStream stores it once
// within the dedup window.
func MsgIDv2(station string, epoch, seq uint64) string {
	return string(appendMsgIDv2(nil, station, epoch, seq))
}

func appendMsgIDv2(b []byte, station string, epoch, seq uint64) []byte {
	b = strconv.AppendUint(append(append(b, station...), '/'), epoch, 10)
	return strconv.AppendUint(append(b, '/'), seq, 10)
}

// appendMsgIDPacked names a packed message by its station, epoch and the
// range of frames it carries: a resend of the same frames in other
// boundaries is then no duplicate of it (stored twice, never lost).
func appendMsgIDPacked(b []byte, station string, epoch, first, last uint64) []byte {
	b = appendMsgIDv2(b, station, epoch, first)
	return strconv.AppendUint(append(b, '-'), last, 10)
}

func appendMsgID(b []byte, bootID, session string, seq uint64) []byte {
	b = append(append(append(b, bootID...), '/'), session...)
	return strconv.AppendUint(append(b, '/'), seq, 10)
}

// Unpack splits the payload of a packed message into its frames (aliasing
// payload), checked against countHdr, the message's Meridian-Count.
func Unpack(payload []byte, countHdr string) ([][]byte, error) {
	want, err := strconv.Atoi(countHdr)
	if err != nil || want < 1 {
		return nil, fmt.Errorf("stream: packed message with Meridian-Count %q", countHdr)
	}
	frames := make([][]byte, 0, min(want, len(payload)/4+1)) // the header is not trusted with memory
	for len(payload) > 0 {
		if len(payload) < 4 {
			return nil, fmt.Errorf("stream: packed message cut inside a length (%d bytes left)", len(payload))
		}
		n := binary.BigEndian.Uint32(payload)
		if uint64(n) > uint64(len(payload)-4) {
			return nil, fmt.Errorf("stream: packed message cut inside a frame of %d bytes", n)
		}
		frames = append(frames, payload[4:4+n:4+n])
		payload = payload[4+n:]
	}
	if len(frames) != want {
		return nil, fmt.Errorf("stream: packed message holds %d frames, Meridian-Count says %d", len(frames), want)
	}
	return frames, nil
}
