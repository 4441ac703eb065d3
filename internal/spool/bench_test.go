package spool

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend appends 1 KiB records, acknowledging them as it goes so
// that segments are deleted and the spool never fills.
func BenchmarkAppend(b *testing.B) {
	for _, bc := range []struct {
		name string
		o    Options
	}{
		{"interval=100ms", Options{SyncInterval: 100 * time.Millisecond}},
		{"always", Options{SyncAlways: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := Open(b.TempDir(), bc.o)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			p := make([]byte, 1024)
			ctx := context.Background()
			b.SetBytes(int64(len(p)))
			b.ReportAllocs()
			for b.Loop() {
				seq, err := s.Append(ctx, p)
				if err != nil {
					b.Fatal(err)
				}
				if seq%4096 == 0 {
					s.Ack(seq)
				}
			}
		})
	}
	// Eight appenders at once with SyncAlways share each fdatasync (group
	// commit).
	b.Run("always/appenders=8", func(b *testing.B) {
		var syncs atomic.Int64
		s, err := Open(b.TempDir(), Options{SyncAlways: true, OnSynced: func(uint64) { syncs.Add(1) }})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		b.SetBytes(1024)
		b.ReportAllocs()
		b.SetParallelism(4) // × GOMAXPROCS 2
		b.RunParallel(func(pb *testing.PB) {
			p := make([]byte, 1024)
			for pb.Next() {
				seq, err := s.Append(context.Background(), p)
				if err != nil {
					b.Error(err)
					return
				}
				if seq%4096 == 0 {
					s.Ack(seq)
				}
			}
		})
		b.ReportMetric(float64(b.N)/float64(max(syncs.Load(), 1)), "records/sync")
	})
}
