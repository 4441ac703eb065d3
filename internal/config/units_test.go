package config

import (
	"testing"
	"time"
)

func TestParseSizeAndDuration(t *testing.T) {
	size := func(in string, want Size, ok bool) {
		t.Helper()
		got, err := ParseSize(in)
		if (err == nil) != ok || got != want {
			t.Fatalf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	size("4096", 4096, true)
	size("512MiB", 512*MiB, true)
	size("10GiB", 10*GiB, true)
	size("1TB", 1000*1000*1000*1000, true)
	size("64 KiB", 64*KiB, true)
	size("-1", 0, false)
	size("lots", 0, false)
	size("9999999999TiB", 0, false)
	dur := func(in string, want time.Duration, ok bool) {
		t.Helper()
		got, err := ParseDuration(in)
		if (err == nil) != ok || got != want {
			t.Fatalf("ParseDuration(%q) = %v, %v", in, got, err)
		}
	}
	dur("7d", 7*24*time.Hour, true)
	dur("90s", 90*time.Second, true)
	dur("1h30m", 90*time.Minute, true)
	dur("d", 0, false)
	dur("-3d", 0, false)
	dur("30", 0, false)
	if Size(10*GiB).String() != "10GiB" || Duration(7*24*time.Hour).String() != "7d" {
		t.Fatal("String does not print what Parse reads")
	}
}

// FuzzParseSize: whatever parses prints back to the same size.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4096", "512MiB", "10GiB", "1TB", "0", "7KB", " 3 B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
		back, err := ParseSize(n.String())
		if err != nil || back != n {
			t.Fatalf("%q -> %d -> %q -> %d, %v", s, n, n.String(), back, err)
		}
	})
}

// FuzzParseDuration: whatever parses prints back to the same duration.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"7d", "90s", "1h30m", "0", "2m", "36500d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		back, err := ParseDuration(Duration(d).String())
		if err != nil || back != d {
			t.Fatalf("%q -> %v -> %q -> %v, %v", s, d, Duration(d).String(), back, err)
		}
	})
}
