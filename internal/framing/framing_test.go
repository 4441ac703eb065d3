package framing

import "testing"

func TestSyncSkip(t *testing.T) {
	f := func(buf []byte, from int, eof bool, wantN int, wantLost bool) {
		t.Helper()
		s := NewSync([]byte{0x1a, 0xcf, 0xfc, 0x1d})
		r := s.Skip(buf, from, eof)
		if r.N != wantN || r.Discarded != wantN || r.SyncLost != wantLost || s.Lost() != wantLost {
			t.Fatalf("Skip(% x, %d, %v) = %+v, want N %d", buf, from, eof, r, wantN)
		}
	}
	f([]byte{1, 2, 3, 0x1a, 0xcf, 0xfc, 0x1d}, 0, false, 3, true)
	f([]byte{1, 2, 3, 4, 5, 0x1a, 0xcf}, 0, false, 4, true) // keeps the last 3: maybe a marker's start
	f([]byte{1, 2, 3, 4, 5, 0x1a, 0xcf}, 0, true, 7, true)  // at EOF, nothing is kept
	f([]byte{0x1a, 0xcf, 0xfc, 0x1d, 9, 9, 9}, 1, false, 4, true)
	f([]byte{0x1a, 0xcf, 0xfc, 0x1d, 0x1a, 0xcf, 0xfc, 0x1d}, 1, false, 4, true)

	s := NewSync([]byte{7})
	if !s.Skip([]byte{1, 7}, 0, false).SyncLost || s.Skip([]byte{1, 7}, 0, false).SyncLost {
		t.Fatal("a sync loss is not counted once per episode")
	}
	if !s.Regain() || s.Regain() {
		t.Fatal("regain is not reported once")
	}
}

func TestSyncInside(t *testing.T) {
	s := NewSync([]byte{0xaa, 0xbb, 0xcc})
	f := func(buf []byte, end, wantPos int, wantMore bool) {
		t.Helper()
		pos, more := s.Inside(buf, 1, end)
		if pos != wantPos || more != wantMore {
			t.Fatalf("Inside(% x, end %d) = %d, %v; want %d, %v", buf, end, pos, more, wantPos, wantMore)
		}
	}
	m := []byte{0xaa, 0xbb, 0xcc}
	f(append([]byte{0xaa, 0xbb, 0xcc, 1, 2}, m...), 8, 5, false)         // wholly inside
	f(append([]byte{0xaa, 0xbb, 0xcc, 1, 2, 3}, m...), 7, 6, false)      // starts inside, ends past
	f(append([]byte{0xaa, 0xbb, 0xcc, 1, 2, 3, 4}, m...), 7, -1, false)  // at end: the next unit in place
	f([]byte{0xaa, 0xbb, 0xcc, 1, 2, 3, 0xaa}, 7, -1, true)              // can't tell yet
	f([]byte{0xaa, 0xbb, 0xcc, 1, 2, 3, 0xaa, 0xbb}, 7, -1, true)        // still can't
	f([]byte{0xaa, 0xbb, 0xcc, 1, 2, 3, 0xaa, 0xbb, 0xcd}, 7, -1, false) // not a marker
	f([]byte{0xaa, 0xbb, 0xcc, 1, 2, 3, 4}, 7, -1, false)                // nothing
}

func TestStrings(t *testing.T) {
	for r := RejectNone; r <= RejectVersion; r++ {
		if s := r.String(); s == "" || s[0] == 'r' {
			t.Fatalf("reject %d has no name: %q", r, s)
		}
	}
	if CRCBad.String() != "bad" || Reject(99).String() != "reject(99)" {
		t.Fatal("names")
	}
}
