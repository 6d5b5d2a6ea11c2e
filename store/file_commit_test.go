package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestCommitterIsolatesFailures(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "c.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	c := newCommitter(db, 8, 0, 0)
	errBoom := errors.New("boom")
	const n = 40
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.do(func(tx *bolt.Tx) error {
				key := []byte(fmt.Sprint(i))
				if err := tx.Bucket([]byte("b")).Put(key, key); err != nil {
					return err
				}
				switch i % 10 {
				case 3:
					return errBoom // after a write: must be rolled back
				case 7:
					panic("bad page")
				}
				return nil
			})
		}()
	}
	wg.Wait()
	_ = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		for i := range n {
			stored := b.Get([]byte(fmt.Sprint(i))) != nil
			switch i % 10 {
			case 3:
				if !errors.Is(errs[i], errBoom) || stored {
					t.Errorf("op %d: err %v, stored %v; want boom and rolled back", i, errs[i], stored)
				}
			case 7:
				if !errors.Is(errs[i], ErrCorrupt) || stored {
					t.Errorf("op %d: err %v, stored %v; want the panic as an error, rolled back", i, errs[i], stored)
				}
			default:
				if errs[i] != nil || !stored {
					t.Errorf("op %d: err %v, stored %v; want committed", i, errs[i], stored)
				}
			}
		}
		return nil
	})
	if c.busy || len(c.queue) != 0 {
		t.Fatalf("committer left busy=%v queue=%d", c.busy, len(c.queue))
	}
}
