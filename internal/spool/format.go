package spool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// The files of a spool directory; the layout is in docs/station.md.
const (
	lockName   = "LOCK"
	metaName   = "meta.json"
	ackedName  = "acked"
	segPrefix  = "seg-"
	segSuffix  = ".log"
	segMagic   = "MRDNSPL1"
	metaFormat = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readBufSize is the size a reader's buffer starts at (it grows to fit the
// largest record). A variable so that the fuzz test can make it tiny and
// exercise records split across reads.
var readBufSize = 256 << 10

func segName(first uint64) string {
	return fmt.Sprintf("%s%020d%s", segPrefix, first, segSuffix)
}

// parseSegName returns the first sequence number a segment file's name
// carries, and false for a name that is not a segment's.
func parseSegName(name string) (uint64, bool) {
	if !strings.HasPrefix(name, segPrefix) || !strings.HasSuffix(name, segSuffix) {
		return 0, false
	}
	digits := name[len(segPrefix) : len(name)-len(segSuffix)]
	if len(digits) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	return n, true
}

func putSegHeader(b []byte, epoch, first uint64) {
	copy(b[0:8], segMagic)
	binary.BigEndian.PutUint64(b[8:16], epoch)
	binary.BigEndian.PutUint64(b[16:24], first)
	binary.BigEndian.PutUint32(b[24:28], crc32.Checksum(b[0:24], castagnoli))
	clear(b[28:32])
}

// errBadHeader: a segment header that is short, of another magic, or whose
// CRC does not match. errOtherEpoch: a good header of another epoch.
var (
	errBadHeader  = errors.New("bad segment header")
	errOtherEpoch = errors.New("segment of another epoch")
)

// checkSegHeader verifies a segment's header against the spool's epoch and
// the first sequence number its name carries.
func checkSegHeader(b []byte, epoch, first uint64) error {
	if len(b) < SegmentHeaderSize || string(b[0:8]) != segMagic ||
		binary.BigEndian.Uint32(b[24:28]) != crc32.Checksum(b[0:24], castagnoli) {
		return errBadHeader
	}
	if binary.BigEndian.Uint64(b[16:24]) != first {
		return errBadHeader
	}
	if e := binary.BigEndian.Uint64(b[8:16]); e != epoch {
		return fmt.Errorf("%w: %d, the spool's is %d", errOtherEpoch, e, epoch)
	}
	return nil
}

// readSegHeader reads and checks the header of the segment file at path.
func readSegHeader(path string, epoch, first uint64) error {
	return checkSegFile(path, epoch, first, false)
}

// checkSegFile checks the header of the segment file at path and, with
// sync, fdatasyncs the file: a process that crashed may have left records
// of a rolled-over segment in the page cache only, and Open claims all it
// finds as synced.
func checkSegFile(path string, epoch, first uint64, sync bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if sync {
		if err := fdatasync(f); err != nil {
			return err
		}
	}
	var b [SegmentHeaderSize]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errBadHeader
		}
		return err
	}
	return checkSegHeader(b[:], epoch, first)
}

// recordCRC is the CRC-32C of a record: its length field, its sequence
// number and time, then its payload (everything but the CRC field).
func recordCRC(hdr []byte, payload []byte) uint32 {
	c := crc32.Update(0, castagnoli, hdr[0:4])
	c = crc32.Update(c, castagnoli, hdr[8:24])
	return crc32.Update(c, castagnoli, payload)
}

// putRecordHeader fills hdr (RecordHeaderSize bytes) for payload.
func putRecordHeader(hdr []byte, seq uint64, nanos int64, payload []byte) {
	binary.BigEndian.PutUint32(hdr[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint64(hdr[8:16], seq)
	binary.BigEndian.PutUint64(hdr[16:24], uint64(nanos))
	binary.BigEndian.PutUint32(hdr[4:8], recordCRC(hdr, payload))
}

type meta struct {
	Format int    `json:"format"`
	Epoch  uint64 `json:"epoch,string"`
}

// readMeta returns the epoch of the spool in dir.
func readMeta(dir string) (uint64, error) {
	path := filepath.Join(dir, metaName)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("spool %s: %w", dir, err)
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return 0, fmt.Errorf("%w: %s: %w", ErrNotSpool, path, err)
	}
	if m.Format != metaFormat {
		return 0, fmt.Errorf("%w: %s: format %d, this program reads format %d", ErrNotSpool, path, m.Format, metaFormat)
	}
	if m.Epoch == 0 {
		return 0, fmt.Errorf("%w: %s: epoch 0", ErrNotSpool, path)
	}
	return m.Epoch, nil
}

// writeMeta creates meta.json with a new random epoch, atomically: a
// crash leaves either no meta file or a whole one.
func writeMeta(dir string) (uint64, error) {
	var epoch uint64
	for epoch == 0 {
		epoch = rand.Uint64()
	}
	b, err := json.Marshal(meta{Format: metaFormat, Epoch: epoch})
	if err != nil {
		return 0, err
	}
	if err := WriteFile(dir, metaName, b, 0o640); err != nil {
		return 0, err
	}
	return epoch, nil
}

// WriteFile writes b as dir/name so that a crash leaves either the old
// file or the whole new one: a temporary file, fsynced, renamed over name,
// and the directory fsynced. For the small state files that live beside a
// spool's segments (meta.json; the follow state of meridian station).
func WriteFile(dir, name string, b []byte, perm os.FileMode) error {
	path := filepath.Join(dir, name)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// syncDirHook, when set (by tests only), is called at the start of every
// SyncDir: the order of directory syncs against creates and unlinks is
// what a power failure would expose, and no test can cut the power.
var syncDirHook func(dir string)

// SyncDir makes the directory's entries (a create, a rename, an unlink)
// durable.
func SyncDir(dir string) error {
	if syncDirHook != nil {
		syncDirHook(dir)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// segFile is a segment file found in a directory listing.
type segFile struct {
	first uint64
	name  string
	size  int64
}

// listSegments returns the segment files of dir, oldest first.
func listSegments(dir string) ([]segFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []segFile
	for _, e := range ents {
		first, ok := parseSegName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		segs = append(segs, segFile{first: first, name: e.Name(), size: info.Size()})
	}
	slices.SortFunc(segs, func(a, b segFile) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	return segs, nil
}
