package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lockedError is ErrLocked with the directory and, when known, the PID of
// the process holding it.
type lockedError struct {
	dir string
	pid int
}

func (e *lockedError) Error() string {
	if e.pid > 0 {
		return fmt.Sprintf("spool %s: directory is in use by process %d", e.dir, e.pid)
	}
	return fmt.Sprintf("spool %s: directory is in use", e.dir)
}

func (e *lockedError) Unwrap() error { return ErrLocked }

// Inspect takes the lock for an instant to see whether it is free; Open
// retries a lock found taken for this long before it returns ErrLocked, so
// that a status probe does not make a starting process fail.
const (
	lockRetryFor   = 250 * time.Millisecond
	lockRetryEvery = 2 * time.Millisecond
)

// lockDir takes the directory's lock, with flock(2) on LOCK, and writes
// this process's PID into it. The lock goes with the file descriptor: it
// is released when the process dies, however it dies.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool %s: %w", dir, err)
	}
	deadline := time.Now().Add(lockRetryFor)
	err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
	for errors.Is(err, syscall.EWOULDBLOCK) && time.Now().Before(deadline) {
		time.Sleep(lockRetryEvery)
		err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &lockedError{dir: dir, pid: readPID(path)}
		}
		return nil, fmt.Errorf("spool %s: lock: %w", dir, err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt(pid, 0)
	}
	if err != nil {
		unlockDir(f)
		return nil, fmt.Errorf("spool %s: lock: %w", dir, err)
	}
	return f, nil
}

func unlockDir(f *os.File) error {
	if f == nil {
		return nil
	}
	err := flock(f, syscall.LOCK_UN)
	return errors.Join(err, f.Close())
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// readPID returns the PID in a LOCK file, 0 when it holds none.
func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// lockHolder reports whether a process holds the lock of dir now, and its
// PID when known. When the lock is free it takes it for an instant
// (flock(2) has no query): released by the very next call, before
// anything else; lockDir's retry covers an Open that lands in between.
func lockHolder(dir string) (bool, int, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	defer f.Close()
	err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		flock(f, syscall.LOCK_UN) // on failure, the deferred Close releases it
		return false, 0, nil
	}
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, readPID(path), nil
	}
	return false, 0, err
}
