package store

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// jobBatch is how many jobs ListJobs and Sweep fetch per round trip.
const jobBatch = 256

// PutJob implements Store. A new job beyond MaxJobs gets ErrFull; replacing
// an existing job never does.
func (s *Redis) PutJob(ctx context.Context, job *Job) error {
	if err := s.lim.checkJob(job); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	octx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.scripts.putJob.Run(octx, s.client, []string{s.keys.job(job.ID), s.keys.jobIndex()},
		appendJob(nil, job), s.lim.MaxJobs, job.ID).Result()
	if err != nil {
		return s.fail(ctx, "put job", err)
	}
	n, err := scriptInt(v)
	switch {
	case err != nil:
		return s.fail(ctx, "put job", err)
	case n == 0:
		return ErrFull
	}
	return nil
}

// GetJob implements Store.
func (s *Redis) GetJob(ctx context.Context, id string) (*Job, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if err := checkKey("job id", id); err != nil {
		return nil, err
	}
	octx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.client.Get(octx, s.keys.job(id)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, ErrNotFound
	case err != nil:
		return nil, s.fail(ctx, "get job", err)
	}
	return decodeJob(id, v)
}

// ListJobs implements Store. It reads the id set and then the jobs, in
// batches; OpTimeout bounds each round trip.
func (s *Redis) ListJobs(ctx context.Context, states ...JobState) ([]*Job, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	ids, err := s.jobIDs(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Job
	for len(ids) > 0 {
		batch := ids[:min(jobBatch, len(ids))]
		ids = ids[len(batch):]
		keys := make([]string, len(batch))
		for i, id := range batch {
			keys[i] = s.keys.job(id)
		}
		octx, cancel := s.op(ctx)
		vals, err := s.client.MGet(octx, keys...).Result()
		cancel()
		if err != nil {
			return nil, s.fail(ctx, "list jobs", err)
		}
		for i, v := range vals {
			str, ok := v.(string)
			if !ok {
				continue // deleted since SMEMBERS
			}
			j, err := decodeJob(batch[i], []byte(str))
			if err != nil {
				return nil, err
			}
			if matchState(j.State, states) {
				out = append(out, j)
			}
		}
	}
	sortJobs(out)
	return out, nil
}

func (s *Redis) jobIDs(ctx context.Context) ([]string, error) {
	octx, cancel := s.op(ctx)
	defer cancel()
	ids, err := s.client.SMembers(octx, s.keys.jobIndex()).Result()
	if err != nil {
		return nil, s.fail(ctx, "list jobs", err)
	}
	return ids, nil
}

// DeleteJob implements Store.
func (s *Redis) DeleteJob(ctx context.Context, id string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := checkKey("job id", id); err != nil {
		return err
	}
	octx, cancel := s.op(ctx)
	defer cancel()
	if err := s.scripts.deleteJob.Run(octx, s.client, []string{s.keys.job(id), s.keys.jobIndex()}, id, "").Err(); err != nil {
		return s.fail(ctx, "delete job", err)
	}
	return nil
}

// jobLease is the key of a job's lease (see LeaseJob): the job's hash tag,
// so that one script may read both, and a separator no job id can forge
// (job keys continue the tag with ':').
func (k redisKeys) jobLease(id string) string { return k.prefix + "{jobs}-lease:" + id }

// LeaseJob implements Store. The lease is a key of its own, "<until> <owner>"
// with until in Unix milliseconds of the caller's clock (the decision uses
// the now the caller passes, as claims do) and PX = lease, so that Redis
// removes a lease nobody renews. One script checks and sets it.
func (s *Redis) LeaseJob(ctx context.Context, id string, now time.Time, lease time.Duration) (bool, error) {
	if s.closed.Load() {
		return false, ErrClosed
	}
	if err := checkKey("job id", id); err != nil {
		return false, err
	}
	if lease <= 0 {
		lease = DefaultJobLease
	}
	octx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.scripts.leaseJob.Run(octx, s.client, []string{s.keys.job(id), s.keys.jobLease(id)},
		s.lim.Owner, strconv.FormatInt(now.UnixMilli(), 10), strconv.FormatInt(now.Add(lease).UnixMilli(), 10), pxOf(lease)).Result()
	if err != nil {
		return false, s.fail(ctx, "lease job", err)
	}
	n, err := scriptInt(v)
	if err != nil {
		return false, s.fail(ctx, "lease job", err)
	}
	return n == 1, nil
}
