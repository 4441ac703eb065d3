// Package sequence tracks CCSDS sequence counters to count missing and
// repeated units: the 14-bit packet sequence count per APID, and the 8-bit
// master channel and virtual channel frame counts of TM transfer frames.
//
// For a counter that wraps at M, the step from the last count seen to the
// new one is d = (new − last) mod M:
//
//	d == 1   in order
//	d == 0   a repeat (the same count again)
//	d == k   a gap: k−1 units missing
//
// A backwards jump cannot be told apart from a gap of almost a whole wrap: a
// count going from 100 to 90 on a 14-bit counter is d = 16374, so 16373
// missing. It is counted that way (and a spacecraft reset shows as a gap),
// which is what Yamcs does too; the new count becomes the reference. The
// first count seen on a key only sets the reference.
//
// Memory is fixed at construction: every one of the 2048 APIDs an 11-bit
// field can name has a slot (about 4 KiB), and frame counts are kept for at
// most MaxSpacecraft spacecraft ids per tracker, 8 virtual channels each (the
// 3-bit VCID). Frames of further spacecraft ids are counted in
// FrameStats.Untracked and not checked.
package sequence

// Step is the outcome of one observed count.
type Step struct {
	First   bool // the first count on this key: no reference yet
	Missing int  // units missing before this one
	Repeat  bool // the same count as the last one
}

// step computes the Step from last to next on a counter wrapping at mod.
func step(last, next, mod uint32) Step {
	d := (next + mod - last) % mod
	switch d {
	case 0:
		return Step{Repeat: true}
	case 1:
		return Step{}
	}
	return Step{Missing: int(d - 1)}
}

// Packet counter constants.
const (
	APIDs       = 2048  // 11-bit APID
	PacketCount = 16384 // 14-bit sequence count
)

// PacketStats are totals over all APIDs.
type PacketStats struct {
	Packets uint64 // counts observed
	Missing uint64
	Repeats uint64
}

// Packets tracks the packet sequence count of every APID. The zero value is
// ready to use.
type Packets struct {
	last  [APIDs]uint16
	seen  [APIDs / 64]uint64 // bit per APID: a reference count is set
	stats PacketStats
}

// Observe records a packet's sequence count for apid (only the low 11 and
// 14 bits are used) and returns its step.
func (p *Packets) Observe(apid, count uint16) Step {
	apid &= APIDs - 1
	count &= PacketCount - 1
	p.stats.Packets++
	w, bit := apid/64, uint64(1)<<(apid%64)
	var s Step
	if p.seen[w]&bit == 0 {
		p.seen[w] |= bit
		s = Step{First: true}
	} else {
		s = step(uint32(p.last[apid]), uint32(count), PacketCount)
	}
	p.last[apid] = count
	p.stats.Missing += uint64(s.Missing)
	if s.Repeat {
		p.stats.Repeats++
	}
	return s
}

// Stats returns the totals.
func (p *Packets) Stats() PacketStats { return p.stats }

// Frame counter constants.
const (
	VCs        = 8   // 3-bit VCID
	FrameCount = 256 // 8-bit MC and VC counts
	// MaxSpacecraft bounds the spacecraft ids one Frames tracker follows.
	MaxSpacecraft = 16
)

// FrameStats are totals over all tracked spacecraft.
type FrameStats struct {
	Frames     uint64 // frames observed, tracked or not
	MCMissing  uint64 // by master channel count
	MCRepeats  uint64
	VCMissing  uint64 // by virtual channel count
	VCRepeats  uint64
	Untracked  uint64 // frames of spacecraft ids beyond MaxSpacecraft
	Spacecraft int    // spacecraft ids tracked
}

type spacecraft struct {
	scid    uint16
	mc      uint8
	vc      [VCs]uint8
	mcSeen  bool
	vcSeen  uint8 // bit per VC
	present bool
}

// FrameStep is the outcome of one observed frame.
type FrameStep struct {
	Tracked bool // false: the spacecraft id is beyond MaxSpacecraft
	MC      Step
	VC      Step
}

// Frames tracks the master channel count per spacecraft id and the virtual
// channel count per (spacecraft id, VCID). The zero value is ready to use.
type Frames struct {
	sc    [MaxSpacecraft]spacecraft
	stats FrameStats
}

// Observe records a frame's counts and returns its steps.
func (f *Frames) Observe(scid uint16, vcid, mc, vc uint8) FrameStep {
	scid &= 0x3ff
	vcid &= VCs - 1
	f.stats.Frames++
	var s *spacecraft
	for i := range f.sc {
		c := &f.sc[i]
		if c.present && c.scid == scid {
			s = c
			break
		}
		if !c.present {
			c.present, c.scid = true, scid
			f.stats.Spacecraft++
			s = c
			break
		}
	}
	if s == nil {
		f.stats.Untracked++
		return FrameStep{}
	}
	fs := FrameStep{Tracked: true}
	if !s.mcSeen {
		s.mcSeen = true
		fs.MC = Step{First: true}
	} else {
		fs.MC = step(uint32(s.mc), uint32(mc), FrameCount)
	}
	s.mc = mc
	if bit := uint8(1) << vcid; s.vcSeen&bit == 0 {
		s.vcSeen |= bit
		fs.VC = Step{First: true}
	} else {
		fs.VC = step(uint32(s.vc[vcid]), uint32(vc), FrameCount)
	}
	s.vc[vcid] = vc
	f.stats.MCMissing += uint64(fs.MC.Missing)
	f.stats.VCMissing += uint64(fs.VC.Missing)
	if fs.MC.Repeat {
		f.stats.MCRepeats++
	}
	if fs.VC.Repeat {
		f.stats.VCRepeats++
	}
	return fs
}

// Stats returns the totals.
func (f *Frames) Stats() FrameStats { return f.stats }
