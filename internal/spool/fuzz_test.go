package spool

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

const fuzzEpoch = 0x1122334455667788

// fuzzRecord is a valid record as the fuzz seeds hold them.
func fuzzRecord(seq uint64, payload []byte) []byte {
	b := make([]byte, RecordHeaderSize+len(payload))
	copy(b[RecordHeaderSize:], payload)
	putRecordHeader(b, seq, int64(seq)*1e9, b[RecordHeaderSize:])
	return b
}

// FuzzOpenAndRead writes data after a valid header (a damaged one when
// chunk's top bit is set) as the only segment of a spool, opens it and
// reads everything back, through a reader buffer of chunk bytes (records
// are then split across reads). Whatever the bytes: no panic, no record
// returned that is not a valid record of the file, sequence numbers
// strictly increasing and at most Last, the reader's Through at Synced
// once it caught up, and the next number above every number read.
func FuzzOpenAndRead(f *testing.F) {
	var valid []byte
	for i := uint64(1); i <= 5; i++ {
		valid = append(valid, fuzzRecord(i, bytes.Repeat([]byte{byte(i)}, int(i*7)))...)
	}
	f.Add(valid, byte(0))
	f.Add(valid, byte(3))
	f.Add(valid[:len(valid)-9], byte(5)) // torn
	damaged := bytes.Clone(valid)
	damaged[RecordHeaderSize*2+10] ^= 1 // second record's payload
	f.Add(damaged, byte(1))
	badLen := bytes.Clone(valid)
	badLen[RecordHeaderSize+7+1] ^= 0x10 // second record's length
	f.Add(badLen, byte(2))
	f.Add(append(bytes.Clone(valid), 0xff, 0, 0, 0, 1), byte(4))
	f.Add([]byte{}, byte(0))
	f.Add(valid, byte(0x80|3))      // damaged header
	f.Add([]byte{1, 2}, byte(0x80)) // damaged header, too short for a record

	f.Fuzz(func(t *testing.T, data []byte, chunk byte) {
		saved := readBufSize
		readBufSize = 1 + int(chunk&0x3f)
		defer func() { readBufSize = saved }()

		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, metaName), []byte(`{"format":1,"epoch":"1234605616436508552"}`), 0o640); err != nil {
			t.Fatal(err)
		}
		seg := make([]byte, SegmentHeaderSize, SegmentHeaderSize+len(data))
		putSegHeader(seg, fuzzEpoch, 1)
		if chunk&0x80 != 0 {
			seg[20] ^= 0x01
		}
		seg = append(seg, data...)
		if err := os.WriteFile(filepath.Join(dir, segName(1)), seg, 0o640); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir, Options{MaxRecord: 1 << 10})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer s.Close()
		st := s.Stats()
		if st.Epoch != fuzzEpoch {
			t.Fatalf("epoch %x", st.Epoch)
		}
		if st.CutBytes < 0 || st.CutBytes > int64(len(data)) {
			t.Fatalf("CutBytes %d of %d", st.CutBytes, len(data))
		}
		r := s.NewReader(1)
		defer r.Close()
		var prev uint64
		for {
			rec, ok, err := r.Next()
			if err != nil {
				t.Fatalf("Next: %v", err)
			}
			if !ok {
				break
			}
			if rec.Seq <= prev || rec.Seq > st.Last {
				t.Fatalf("seq %d after %d, Last %d", rec.Seq, prev, st.Last)
			}
			prev = rec.Seq
			// Returned only if it is, byte for byte, a record with a
			// valid CRC in the file.
			want := make([]byte, RecordHeaderSize+len(rec.Payload))
			copy(want[RecordHeaderSize:], rec.Payload)
			putRecordHeader(want, rec.Seq, rec.Time.UnixNano(), want[RecordHeaderSize:])
			if !bytes.Contains(seg[SegmentHeaderSize:], want) {
				t.Fatalf("record %d is not in the file", rec.Seq)
			}
		}
		if r.Through() != st.Synced || st.Synced != st.Last {
			t.Fatalf("caught up: Through %d, Synced %d, Last %d", r.Through(), st.Synced, st.Last)
		}
		// The numbering goes on past everything that survived.
		seq, err := s.Append(context.Background(), []byte("x"))
		if err != nil || seq != st.Last+1 {
			t.Fatalf("Append: %d %v, Last %d", seq, err, st.Last)
		}
	})
}
