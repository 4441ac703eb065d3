package sequence

import "testing"

func TestStep(t *testing.T) {
	f := func(last, next, mod uint32, want Step) {
		t.Helper()
		if got := step(last, next, mod); got != want {
			t.Fatalf("step(%d→%d mod %d) = %+v, want %+v", last, next, mod, got, want)
		}
	}
	f(5, 6, 16384, Step{})
	f(5, 5, 16384, Step{Repeat: true})
	f(5, 8, 16384, Step{Missing: 2})        // a jump of 3: 2 missing
	f(16383, 0, 16384, Step{})              // wrap
	f(16382, 1, 16384, Step{Missing: 2})    // gap across the wrap
	f(100, 90, 16384, Step{Missing: 16373}) // backwards: a gap modulo the wrap
	f(255, 0, 256, Step{})                  // 8-bit wrap
	f(10, 9, 256, Step{Missing: 254})       // one back on 8 bits
	f(0, 255, 256, Step{Missing: 254})      // a skip to the end
	f(3, 3+256, 256, Step{Repeat: true})    // inputs beyond mod wrap too
}

func TestPackets(t *testing.T) {
	var p Packets
	f := func(apid, count uint16, want Step) {
		t.Helper()
		if got := p.Observe(apid, count); got != want {
			t.Fatalf("Observe(%d, %d) = %+v, want %+v", apid, count, got, want)
		}
	}
	f(100, 16383, Step{First: true})
	f(100, 0, Step{})
	f(200, 7, Step{First: true}) // APIDs are independent
	f(100, 3, Step{Missing: 2})
	f(100, 3, Step{Repeat: true})
	f(200, 8, Step{})
	f(2047, 1, Step{First: true})
	f(2047+2048, 2, Step{}) // the APID is cut to 11 bits: the same key
	want := PacketStats{Packets: 8, Missing: 2, Repeats: 1}
	if got := p.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

func TestFrames(t *testing.T) {
	var fr Frames
	f := func(scid uint16, vcid, mc, vc uint8, want FrameStep) {
		t.Helper()
		if got := fr.Observe(scid, vcid, mc, vc); got != want {
			t.Fatalf("Observe(%d, %d, %d, %d) = %+v, want %+v", scid, vcid, mc, vc, got, want)
		}
	}
	first := Step{First: true}
	f(42, 0, 255, 10, FrameStep{Tracked: true, MC: first, VC: first})
	f(42, 1, 0, 200, FrameStep{Tracked: true, VC: first})            // MC wraps; VC 1 is new
	f(42, 0, 3, 11, FrameStep{Tracked: true, MC: Step{Missing: 2}})  // two frames of the MC lost, none of VC 0
	f(42, 1, 4, 203, FrameStep{Tracked: true, VC: Step{Missing: 2}}) // they were VC 1's
	f(42, 1, 4, 203, FrameStep{Tracked: true, MC: Step{Repeat: true}, VC: Step{Repeat: true}})
	f(43, 0, 0, 0, FrameStep{Tracked: true, MC: first, VC: first}) // another spacecraft
	want := FrameStats{Frames: 6, MCMissing: 2, MCRepeats: 1, VCMissing: 2, VCRepeats: 1, Spacecraft: 2}
	if got := fr.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

func TestFramesBounded(t *testing.T) {
	var fr Frames
	for id := uint16(0); id < MaxSpacecraft; id++ {
		if !fr.Observe(id, 0, 0, 0).Tracked {
			t.Fatalf("scid %d not tracked", id)
		}
	}
	if got := fr.Observe(MaxSpacecraft, 0, 0, 0); got.Tracked {
		t.Fatalf("spacecraft %d beyond the bound is tracked", MaxSpacecraft)
	}
	if !fr.Observe(3, 0, 1, 1).Tracked {
		t.Fatal("a known spacecraft is no longer tracked")
	}
	s := fr.Stats()
	if s.Untracked != 1 || s.Spacecraft != MaxSpacecraft || s.Frames != MaxSpacecraft+2 {
		t.Fatalf("stats %+v", s)
	}
}

func BenchmarkPackets(b *testing.B) {
	var p Packets
	var i uint16
	for b.Loop() {
		p.Observe(i&0x7ff, i>>3)
		i++
	}
}
