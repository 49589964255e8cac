// Package ops owns what the bot does to the installation: status, and the
// backup (EBS snapshots, circleci-backup tarballs), restore, failover,
// drill, retention, report and builder-rotation operations. Each operation
// plans from live AWS state (a plan the approval is bound to) and runs as
// ordered, idempotent steps. It talks to AWS through narrow interfaces of
// only the SDK methods it calls; tests pass a real client pointed at moto,
// or a small fake.
//
// # Files
//
// One file per operation (backup.go, restore.go, failover.go, drill.go,
// builders.go, tarball*.go, status.go, …), and what several share:
//
//   - aws.go: the shared interfaces, the shared look-ups (FindBox,
//     describeInstance, waitInstanceState, InterfacesHolding, ipHolderOf),
//     and the error boundary (translate, the Err* sentinels).
//   - retry.go: the one retry policy (again, retrying, RetryRead), waits
//     (waitFor) and the calls that must not run twice (onceEC2, onceSSM).
//   - fence.go: the one fence (stop, force, confirm) restore and failover
//     both use before anything moves.
//   - health.go: the one health wait (status checks, SSM agent online,
//     HTTP probe) restore, failover and drill use.
//   - errors.go: RefusalError and Explain, the one sentence people see.
//
// # Errors
//
// AWS errors are translated once, where the call returns: translate maps
// the codes a decision depends on to sentinels (ErrNotFound, ErrThrottled,
// ErrIPInUse, ErrInsufficientCapacity…) and keeps the SDK's error in the
// chain, so errors.Is(err, ErrX) and errors.As(err, &smithy.APIError) both
// hold and the text is the SDK's. Decisions use errors.Is and errors.As
// only; no code is compared and no message text matched anywhere else.
// Explain reads the chain (the callers' wraps, the operation, AWS's code
// and message) into one sentence without request IDs or HTTP details.
//
// # Retries
//
// Each failure is tried again by one layer only:
//
//   - The SDK retries a call (throttling, 5xx, connection errors) with the
//     standard retryer internal/awsclient configures for every client.
//   - A wait (an instance stopping, an image becoming available, a box
//     passing its checks) polls until its deadline; a poll whose read
//     failed transiently saw nothing and the next comes at its usual time.
//     A wait that runs out is not retried.
//   - A step whose call still failed transiently (the SDK gave up) is run
//     again from the top after a pause, a few times (retrying; RetryRead
//     for plans). Steps find what an earlier attempt made, so this is safe.
//
// Calls that must not run twice (CreateSnapshots, RegisterImage,
// SendCommand) let the SDK retry only throttled attempts, which AWS
// refused without running; after a lost answer the caller looks for what
// the call made before calling again.
package ops
