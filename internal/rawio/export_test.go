package rawio

// SetTestHookRearm installs f as the re-arm hook until the returned func
// restores the previous one.
func SetTestHookRearm(f func()) (restore func()) {
	old := testHookRearm
	testHookRearm = f
	return func() { testHookRearm = old }
}

// SetTestHookYield installs f, run each time a Read yields before
// reading, until the returned func restores the previous one.
func SetTestHookYield(f func()) (restore func()) {
	old := testHookYield
	testHookYield = f
	return func() { testHookYield = old }
}
